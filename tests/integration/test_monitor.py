"""The monitor on real published days: realized metrics equal scikit-learn's on pairs the test pulls
itself, estimates for days not matured, drift from the histograms counted while scoring."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import numpy as np
import pytest
from psycopg import sql
from sklearn.metrics import roc_auc_score

from mlpipe import monitor, performance
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import TODAY, days_ago, run_cli, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _pairs(conn, day: date) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of a published day, labels from the demo tables directly (not the job's SQL)."""
    rows = conn.execute(
        """select h.score, exists (
                  select from demo.cancellations x where x.customer_id = h.entity_id
                      and x.canceled_at >= %(day)s::timestamptz
                      and x.canceled_at < %(day)s::timestamptz + interval '30 days')::int
           from predictions.churn_history h where h.as_of = %(day)s""",
        {"day": day},
    ).fetchall()
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def test_monitor_records_realized_estimated_and_drift(conn):
    matured, recent = days_ago(45), days_ago(2)
    runs = {day: score("churn", day)["run_id"] for day in (matured, recent)}
    spec = load_job("churn", Settings())

    result = monitor.monitor(conn, spec, date.today())

    assert result.drift_days == [matured, recent] and result.performance_days == [matured, recent]
    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            """select as_of, arm, matured, n, roc_auc, roc_auc_lo, roc_auc_hi, estimated_roc_auc,
                      unavailable, run_id
               from mlpipe.performance where job = 'churn'"""
        )
    }
    arm, is_matured, n, auc, low, high, estimated, unavailable, run_id = rows[matured]
    scores, labels = _pairs(conn, matured)
    assert (arm, is_matured, n, run_id) == ("champion", True, len(scores), runs[matured])
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    assert low < auc < high and estimated is not None and unavailable is None
    arm, is_matured, n, auc, *_, unavailable, _ = rows[recent]
    assert not is_matured and auc is None and "not matured" in unavailable

    drift = conn.execute(
        "select feature, level, psi_reference from mlpipe.drift where job = 'churn' and as_of = %s",
        [recent],
    ).fetchall()
    features = {f for f, *_ in drift}
    assert features == set(spec.features) | set(spec.derived) | {"score"}
    assert {level for _, level, _ in drift} == {"ok"}, [d for d in drift if d[1] != "ok"]

    again = monitor.monitor(conn, spec, date.today())
    assert again.drift_days == [] and again.performance_days == [], "each day is computed once"
    later = monitor.monitor(conn, spec, recent + timedelta(days=spec.training.horizon_days))
    assert later.performance_days == [recent], "a day is computed again when it matures"


def test_the_cli_prints_figures_and_a_crossed_fail_threshold_exits_1_in_one_line(conn, tmp_path, prefect_api):
    day = days_ago(2)
    score("churn", day)
    env = {"PREFECT_API_URL": prefect_api}
    ok = run_cli("monitor", "--job", "churn", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "worst_feature" in ok.stdout and "recorded in mlpipe.drift" in ok.stdout
    assert "report: " in ok.stdout and "churn.html" in ok.stdout, "the monitor keeps the newest report"
    out = tmp_path / "report.html"
    written = run_cli("report", "--job", "churn", "--days", "30", "--out", str(out))
    assert written.returncode == 0 and str(out) in written.stdout, written.stderr
    assert out.read_text().count("<svg") >= 3, "a self-contained report with its charts inline"

    # The same job with thresholds no day can meet: the monitor run fails, naming feature, value and day.
    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", Settings()).folder, folder)
    spec_file = folder / "job.yaml"
    spec_file.write_text(
        spec_file.read_text() + "monitoring:\n  drift: {warn: 0.00001, fail: 0.00002}\n", encoding="utf-8"
    )
    failed = run_cli("monitor", "--job", str(spec_file), env=env)
    assert failed.returncode == 1, failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: drift of "), failed.stderr
    assert f"on {day} is " in lines[0] and "the job's fail threshold 2e-05" in lines[0]
    status, error = conn.execute(
        "select status, error from mlpipe.runs where kind = 'monitor' order by run_id desc limit 1"
    ).fetchone()
    assert status == "failed" and "MonitorAlert: drift of" in error


def _churn_with_outcomes(tmp_path, outcomes_sql: str):
    """The churn job reading its ground truth from an outcomes source instead of its labels SQL."""
    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", Settings()).folder, folder)
    (folder / "outcomes.sql").write_text(outcomes_sql, encoding="utf-8")
    spec_file = folder / "job.yaml"
    text = spec_file.read_text().replace(
        "  labels: labels.sql", "  labels: labels.sql\n  outcomes: outcomes.sql"
    )
    spec_file.write_text(text, encoding="utf-8")
    return load_job(str(spec_file), Settings())


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("where false", "no outcomes for the entities scored that day"),
        ("", "every outcome that day is negative: AUC is undefined"),
    ],
)
def test_a_matured_day_without_outcomes_or_of_one_class_says_why(conn, tmp_path, outcome, reason):
    day = days_ago(40)
    score("churn", day)
    spec = _churn_with_outcomes(
        tmp_path,
        "select customer_id, 0 as outcome, %(cutoff)s::timestamptz as observed_at "
        f"from demo.customers {outcome}",
    )
    monitor.monitor(conn, spec, date.today())
    matured, auc, unavailable = conn.execute(
        "select matured, roc_auc, unavailable from mlpipe.performance where as_of = %s", [day]
    ).fetchone()
    assert matured and auc is None and unavailable == reason


def test_several_outcomes_for_a_key_are_detected_said_and_the_highest_counts(conn, tmp_path, caplog):
    day = days_ago(40)
    score("churn", day)
    # Every customer twice in the day's window: a 0 first, then 1 for odd keys (a 0 again for even ones).
    spec = _churn_with_outcomes(
        tmp_path,
        "select customer_id, 0 as outcome, %(cutoff)s::timestamptz as observed_at from demo.customers "
        "union all select customer_id, customer_id %% 2, %(cutoff)s::timestamptz + interval '1 day' "
        "from demo.customers",
    )
    monitor.monitor(conn, spec, date.today())
    n, positives = conn.execute(
        "select n, positives from mlpipe.performance where as_of = %s and arm = 'champion'", [day]
    ).fetchone()
    scored = conn.execute(
        "select count(*), count(*) filter (where entity_id %% 2 = 1) from predictions.churn_history "
        "where as_of = %s",
        [day],
    ).fetchone()
    assert (n, positives) == scored, "each scored entity once, with its highest outcome"
    assert any(f"{scored[0]} more rows than the {scored[0]} entities" in m for m in caplog.messages)


def test_a_day_joined_as_key_ranges_at_once_gives_the_figures_of_one_join(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("MLPIPE_CHUNK_ROWS", "300")  # several chunks, whose starts cut the ranges
    day = days_ago(40)
    run_id = score("churn", day)["run_id"]
    # Outcomes for most customers (every seventh has none), cancellations in the window positive.
    spec = _churn_with_outcomes(
        tmp_path,
        "select c.customer_id, exists (select from demo.cancellations x where x.customer_id = c.customer_id "
        "and x.canceled_at >= %(cutoff)s::timestamptz)::int as outcome, %(cutoff)s::timestamptz as "
        "observed_at from demo.customers c where c.customer_id %% 7 <> 3",
    )
    query, params = monitor._outcomes(spec)
    stored = performance.stored_bins(conn, spec, day, run_id)
    bounds = performance._key_bounds(conn, spec, day, "published", 3)
    assert len(bounds) == 3 and bounds[0] is None, bounds

    def joined(ranges: int) -> dict:
        scored, realized = performance.day_bins(
            conn, spec, day, "published", (query, params(day)), stored, merge_join=True, ranges=ranges
        )
        assert scored is stored
        return realized

    one, three = joined(1), joined(3)
    assert one.keys() == three.keys() and one
    for version, bins in one.items():
        split = three[version]
        assert 0 < bins.positives.sum() < bins.n.sum() < stored[version].n.sum()
        assert split.n.tolist() == bins.n.tolist() and split.positives.tolist() == bins.positives.tolist()
        np.testing.assert_allclose(split.score_sum, bins.score_sum, rtol=1e-12, atol=1e-12)
        assert split.log_loss_sum == pytest.approx(bins.log_loss_sum, rel=1e-9)
        assert split.brier_sum == pytest.approx(bins.brier_sum, rel=1e-9)
        # Log loss and Brier against their definitions on the pairs read here.
        rows = conn.execute(
            sql.SQL(
                "select h.score, o.label from predictions.churn_history h join ({}) o "
                "on o.customer_id = h.entity_id where h.as_of = %(cutoff)s"
            ).format(query),
            params(day),
        ).fetchall()
        scores, labels = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        assert len(rows) == bins.n.sum()
        assert split.log_loss_sum == pytest.approx(
            -np.sum(labels * np.log(scores) + (1 - labels) * np.log(1 - scores)), rel=1e-9
        )
        assert split.brier_sum == pytest.approx(np.sum((scores - labels) ** 2), rel=1e-9)


def test_a_snapshot_job_gets_drift_and_estimates_but_no_realized_figures(conn):
    score("titanic", days_ago(40))
    monitor.monitor(conn, load_job("titanic", Settings()), date.today())
    matured, auc, estimated, unavailable = conn.execute(
        """select matured, roc_auc, estimated_roc_auc, unavailable
           from mlpipe.performance where job = 'titanic'"""
    ).fetchone()
    assert (
        matured
        and auc is None
        and estimated is not None
        and "snapshot job needs sources.outcomes" in unavailable
    )
    drift = dict(
        conn.execute("select feature, unknown_share from mlpipe.drift where job = 'titanic'").fetchall()
    )
    assert set(drift) == {"sex", "age_years", "passenger_class", "score"} and drift["sex"] == 0.0


def test_a_model_from_before_reference_histograms_is_told_to_retrain(conn, caplog):
    conn.execute("update mlpipe.models set reference = reference - 'histograms' where job = 'churn'")
    day = days_ago(40)
    score("churn", day)
    assert conn.execute("select input_histograms from mlpipe.runs where as_of = %s", [day]).fetchone() == (
        None,
    )
    with caplog.at_level("WARNING", logger="mlpipe.monitor"):
        result = monitor.monitor(conn, load_job("churn", Settings()), date.today())
    assert result.drift_days == [] and result.performance_days == [day], "performance is still computed"
    assert (
        "predates drift reference histograms" in caplog.text
        and "retrain (`mlpipe train --job churn`)" in caplog.text
    )


def test_numpy_score_bins_are_postgresqls_width_buckets(conn):
    # Every bin edge (where float8 rounding decides), both ends, and random scores.
    edges = np.arange(performance.SCORE_BINS + 1) / performance.SCORE_BINS
    scores = np.concatenate([edges, np.nextafter(edges, 0), np.random.default_rng(5).random(20_000)])
    scores = np.clip(scores, 0.0, 1.0)
    in_postgresql = conn.execute(
        """select least(width_bucket(s, 0, 1, %(bins)s), %(bins)s) - 1
           from unnest(%(scores)s::float8[]) with ordinality as u(s, i) order by i""",
        {"bins": performance.SCORE_BINS, "scores": scores.tolist()},
    ).fetchall()
    assert performance.bin_index(scores).tolist() == [r[0] for r in in_postgresql]


def _same(got, want) -> bool:
    """Equal, floats to 1e-9 (sums of the same scores in another order), through lists and dicts."""
    if isinstance(want, float) and isinstance(got, float):
        return got == pytest.approx(want, rel=1e-9)
    if isinstance(want, list | tuple) and isinstance(got, list | tuple):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return got == want


def _performance_rows(conn) -> dict:
    rows = conn.execute(
        """select as_of, arm, n, positives, roc_auc, pr_auc, log_loss, brier, mean_score, estimated_roc_auc,
                  unavailable, calibration
           from mlpipe.performance where job = 'churn'"""
    ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_score_bins_counted_while_scoring_give_the_metrics_of_a_scan_of_the_day(conn):
    matured, recent = days_ago(45), days_ago(2)
    runs = {day: score("churn", day)["run_id"] for day in (matured, recent)}
    spec = load_job("churn", Settings())
    for day, run_id in runs.items():
        stored = performance.stored_bins(conn, spec, day, run_id)
        scanned, _ = performance.day_bins(conn, spec, day)
        assert stored is not None and stored.keys() == scanned.keys()
        for version, bins in stored.items():
            assert bins.n.tolist() == scanned[version].n.tolist()
            np.testing.assert_allclose(bins.score_sum, scanned[version].score_sum, rtol=1e-12, atol=1e-12)

    monitor.monitor(conn, spec, TODAY)
    from_bins = _performance_rows(conn)
    # The same monitor without the stored bins (a run from before them) scans the days instead.
    conn.execute("update mlpipe.run_chunks set summary = summary - 'score_bins'")
    assert performance.stored_bins(conn, spec, recent, runs[recent]) is None
    conn.execute("delete from mlpipe.performance")
    monitor.monitor(conn, spec, TODAY)
    from_scan = _performance_rows(conn)

    assert from_bins.keys() == from_scan.keys() == {(matured, "champion"), (recent, "champion")}
    for key, figures in from_bins.items():
        assert _same(figures, from_scan[key]), (key, figures, from_scan[key])
    assert from_bins[(matured, "champion")][2] is not None, "the matured day has a realized AUC"


def test_a_runs_counts_give_the_anti_joins_entities_without_row(conn):
    spec = load_job("churn", Settings())
    population = sql.SQL(spec.sql("population"))
    # Three active customers with a plan the job rejects: quarantined by today's run.
    conn.execute(
        sql.SQL(
            """update demo.customers set plan = 'gold' where customer_id in (
                   select customer_id from ({}) as p order by customer_id limit 3)"""
        ).format(population),
        {"as_of": TODAY},
    )
    run = score("churn", TODAY)
    assert run["rows_quarantined"] == 3
    first = conn.execute("select max(customer_id) + 1 from demo.customers").fetchone()[0]
    conn.execute(  # signed up after the run: in the population as of now, not in the day
        """insert into demo.customers (customer_id, signup_at, plan, country, is_marketing_opt_in)
           select %s + g, now() - interval '1 second', 'basic', 'DE', false from generate_series(0, 4) g""",
        [first],
    )
    day = conn.execute(
        "select table_name from mlpipe.partitions where job = 'churn' and kind = 'published' and as_of = %s",
        [TODAY],
    ).fetchone()[0]
    anti_join = conn.execute(
        sql.SQL(
            "select count(*) from ({population}) as p where p.customer_id is not null "
            "and not exists (select from {day} as d where d.entity_id = p.customer_id)"
        ).format(population=population, day=sql.Identifier("mlpipe_data", day)),
        {"as_of": conn.execute("select now()").fetchone()[0]},
    ).fetchone()[0]

    assert anti_join == 3 + 5
    assert monitor.entities_without_row(conn, spec, TODAY) == anti_join
