"""The monitor: for every published day, drift from the run's histograms and performance from the
day's outcomes once they have matured (estimated before), recorded in mlpipe.drift and
mlpipe.performance; then the job's thresholds are applied to the newest figures.

Each day is computed once per scoring run that published it (a re-scored day is computed again), and
realized performance once more when its outcomes mature, so a daily monitor costs one day of work.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from mlpipe import drift, performance, runs
from mlpipe.calibration import Calibration
from mlpipe.errors import MlpipeError
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)


class MonitorAlert(MlpipeError):
    """A figure crossed the job's fail threshold."""


@dataclass(frozen=True)
class Finding:
    level: str  # warn or fail
    day: date
    what: str  # "drift of sessions_30d" or "realized roc_auc"
    value: float
    threshold: float
    detail: str

    def __str__(self) -> str:
        return (
            f"{self.what} on {self.day} is {self.value:.3f}, at or past the job's {self.level} threshold "
            f"{self.threshold:g} ({self.detail})"
        )


@dataclass(frozen=True)
class PublishedDay:
    as_of: date
    run_id: int
    model_id: int
    model_version: str
    test_metrics: dict
    histograms: dict | None  # what the run counted
    reference: dict | None  # the model's training bins
    has_shadow: bool


@dataclass
class MonitorResult:
    job: str
    as_of: date
    run_id: int
    drift_days: list[date] = field(default_factory=list)
    performance_days: list[date] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "fail"]

    def as_dict(self) -> dict:
        """What the flow returns and the CLI prints."""
        return {
            "job": self.job,
            "as_of": self.as_of.isoformat(),
            "run_id": self.run_id,
            "drift_days": [d.isoformat() for d in self.drift_days],
            "performance_days": [d.isoformat() for d in self.performance_days],
            "findings": [{"level": f.level, "message": str(f)} for f in self.findings],
            "figures": self.figures,
        }


def monitor(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> MonitorResult:
    """Bring drift and performance up to date as of `as_of`, record them and judge the newest.
    `conn` is an autocommit connection; the run holds the job's monitor lock on it."""
    started = time.monotonic()
    run_id = runs.start_exclusive(conn, "monitor", spec.name, as_of)
    result = MonitorResult(spec.name, as_of, run_id)
    parts = dict.fromkeys(("drift_s", "bins_s", "join_s", "judge_s", "key_figures_s"), 0.0)
    try:
        days = published_days(conn, spec, as_of)
        previous = None
        for day in days:
            with _timed(parts, "drift_s"):
                if _record_drift(conn, spec, day, previous):
                    result.drift_days.append(day.as_of)
            if _record_performance(conn, spec, day, as_of, parts):
                result.performance_days.append(day.as_of)
            previous = day
        with _timed(parts, "judge_s"):
            result.findings = judge(conn, spec, as_of)
        with _timed(parts, "key_figures_s"):
            result.figures = key_figures(conn, spec, as_of)
    except BaseException as exc:
        runs.fail(conn, run_id, exc)
        raise
    # The parts' seconds too, so the remaining cost is visible in mlpipe.runs (and bench/monitor.py).
    timings = {
        "total_s": round(time.monotonic() - started, 3),
        "days": len(days),
        **{name: round(seconds, 3) for name, seconds in parts.items()},
    }
    if result.failed:
        runs.fail(conn, run_id, MonitorAlert(str(result.failed[0])))
        runs.record_result(conn, run_id, timings)
    else:
        runs.succeed(conn, run_id, None, timings)
    return result


@contextmanager
def _timed(parts: dict, name: str):
    started = time.monotonic()
    try:
        yield
    finally:
        parts[name] = parts.get(name, 0.0) + time.monotonic() - started


def raise_on_failure(result: MonitorResult) -> None:
    """The first crossed fail threshold as one line (and how many more there are)."""
    if result.failed:
        more = len(result.failed) - 1
        raise MonitorAlert(f"{result.failed[0]}" + (f"; and {more} more (see mlpipe.drift)" if more else ""))


def published_days(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> list[PublishedDay]:
    """Every published day up to `as_of`, oldest first, with its run's model and histograms."""
    rows = conn.execute(
        """select p.as_of, p.run_id, m.model_id, m.model_version, m.metrics -> 'test', r.input_histograms,
                  m.reference -> 'histograms',
                  exists (select from mlpipe.partitions s
                          where s.job = p.job and s.kind = 'shadow' and s.as_of = p.as_of)
           from mlpipe.partitions p join mlpipe.runs r using (run_id)
           join mlpipe.models m on m.model_id = r.model_id
           where p.job = %s and p.kind = 'published' and p.as_of <= %s order by p.as_of""",
        [spec.name, as_of],
    ).fetchall()
    return [PublishedDay(*row) for row in rows]


def _record_drift(conn, spec: JobSpec, day: PublishedDay, previous: PublishedDay | None) -> bool:
    done = conn.execute(
        "select 1 from mlpipe.drift where job = %s and as_of = %s and run_id = %s limit 1",
        [spec.name, day.as_of, day.run_id],
    ).fetchone()
    if done:
        return False
    if not day.reference or not day.histograms:
        log.warning(
            "%s %s: model %s predates drift reference histograms, so run %s counted none: no drift for "
            "that day; retrain (`mlpipe train --job %s`) to monitor drift",
            spec.name,
            day.as_of,
            day.model_version,
            day.run_id,
            spec.name,
        )
        return False
    # Against the previous day only when it counted into the same bins (the same model).
    same_bins = previous is not None and previous.model_id == day.model_id and previous.histograms
    reference, against = day.reference, "training"
    rows = []
    for feature, counts in day.histograms.items():
        bins = reference.get(feature)
        if bins is None:
            continue
        before = previous.histograms.get(feature) if same_bins else None
        psi = drift.psi(counts, bins["counts"])
        rows.append(
            (
                spec.name,
                day.as_of,
                day.run_id,
                feature,
                psi,
                drift.js_distance(counts, bins["counts"]),
                before and drift.psi(counts, before),
                before and drift.js_distance(counts, before),
                drift.missing_share(counts),
                drift.unknown_share(bins, counts) if "kind" in bins else None,
                against,
                drift.level(psi, spec.monitoring.drift.warn, spec.monitoring.drift.fail),
            )
        )
    with conn.transaction():
        conn.execute("delete from mlpipe.drift where job = %s and as_of = %s", [spec.name, day.as_of])
        with conn.cursor() as cur:
            cur.executemany(
                """insert into mlpipe.drift (job, as_of, run_id, feature, psi_reference, js_reference,
                       psi_previous, js_previous, missing_share, unknown_share, reference, level)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                rows,
            )
    return True


def _record_performance(
    conn, spec: JobSpec, day: PublishedDay, as_of: date, parts: dict | None = None
) -> bool:
    matured = day.as_of + timedelta(days=spec.training.horizon_days) <= as_of
    done = conn.execute(
        """select bool_and(matured) from mlpipe.performance
           where job = %s and as_of = %s and run_id = %s""",
        [spec.name, day.as_of, day.run_id],
    ).fetchone()[0]
    if done is not None and (done or not matured):
        return False
    parts = {} if parts is None else parts
    outcomes = _outcomes(spec) if matured else None
    recalibrations = _recalibrations(conn, spec)
    rows = []
    stored = None
    if not day.has_shadow:
        with _timed(parts, "bins_s"):
            stored = performance.stored_bins(conn, spec, day.as_of, day.run_id)
    for kind in ("published", "shadow") if day.has_shadow else ("published",):
        pairs = outcomes and (outcomes[0], outcomes[1](day.as_of))
        with _timed(parts, "join_s" if pairs or stored is None else "bins_s"):
            estimated, realized = performance.day_bins(
                conn, spec, day.as_of, kind, pairs, stored, merge_join=bool(spec.sources.outcomes)
            )
        for version, bins in estimated.items():
            arm = (
                "shadow" if kind == "shadow" else "champion" if version == day.model_version else "challenger"
            )
            figures = performance.estimated(bins, recalibrations.get(version))
            if outcomes is None:
                figures["unavailable"] = _why_not_realized(spec, matured)
            elif version in realized:
                figures.update(performance.realized(realized[version]))
            else:
                figures["unavailable"] = "no outcomes for the entities scored that day"
            rows.append((version, arm, figures))
    _store_performance(conn, spec, day, matured, rows)
    return True


_PERFORMANCE_FIGURES = (
    "n positives roc_auc roc_auc_lo roc_auc_hi pr_auc log_loss brier calibration mean_score "
    "estimated_roc_auc estimated_positive_rate unavailable"
).split()


def _store_performance(conn, spec: JobSpec, day: PublishedDay, matured: bool, rows: list) -> None:
    """Replace the day's performance rows (one per model version and arm) in one transaction."""
    columns = sql.SQL(", ").join(map(sql.Identifier, _PERFORMANCE_FIGURES))
    insert = sql.SQL(
        "insert into mlpipe.performance (job, as_of, model_version, arm, run_id, matured, {columns}) "
        "values (%s, %s, %s, %s, %s, %s, {values})"
    ).format(columns=columns, values=sql.SQL(", ").join(sql.Placeholder() * len(_PERFORMANCE_FIGURES)))
    with conn.transaction():
        conn.execute("delete from mlpipe.performance where job = %s and as_of = %s", [spec.name, day.as_of])
        for version, arm, figures in rows:
            values = [figures.get(name) for name in _PERFORMANCE_FIGURES]
            values[_PERFORMANCE_FIGURES.index("calibration")] = figures.get("calibration") and Jsonb(
                figures["calibration"]
            )
            conn.execute(insert, [spec.name, day.as_of, version, arm, day.run_id, matured, *values])


def _recalibrations(conn, spec: JobSpec) -> dict[str, Calibration | None]:
    """model_version -> the Platt map fitted on its test set (None for versions from before it)."""
    rows = conn.execute(
        "select model_version, reference -> 'recalibration' from mlpipe.models where job = %s", [spec.name]
    ).fetchall()
    return {version: Calibration.from_dict(values) for version, values in rows}


def _why_not_realized(spec: JobSpec, matured: bool) -> str:
    if not matured:
        return f"outcomes not matured yet (horizon {spec.training.horizon_days} days)"
    return "the job has no outcomes: a snapshot job needs sources.outcomes for realized performance"


def _outcomes(spec: JobSpec, source: str | None = None):
    """(query, params for a day) of the (key, label) pairs for a day, or None when the job has none.
    `source`: another outcomes SQL than the job's (bench/monitor.py compares two)."""
    horizon = spec.training.horizon_days
    if spec.sources.outcomes or source:
        # One row per outcome (performance.day_bins checks keys for duplicates); the window's bounds
        # are scalar subqueries, so PostgreSQL computes them once, not for each of millions of rows.
        query = sql.SQL(
            """select {key}, outcome::int as label from ({source}) as o
               where observed_at >= (select %(cutoff)s::timestamptz)
                 and observed_at < (select %(cutoff)s::timestamptz + %(horizon_days)s * interval '1 day')"""
        ).format(key=sql.Identifier(spec.entity.key), source=sql.SQL(source or spec.sql("outcomes")))
    elif spec.history:
        query = sql.SQL(spec.sql("labels"))
    else:
        return None
    return query, lambda day: {"cutoff": day, "as_of": day, "horizon_days": horizon}


def judge(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> list[Finding]:
    """The job's thresholds on the newest day's drift and the newest matured day's performance."""
    thresholds = spec.monitoring.drift
    # The job's current thresholds, also on a day computed before they changed (the table follows).
    levels = conn.execute(
        """update mlpipe.drift set level = case when psi_reference >= %(fail)s then 'fail'
                                                when psi_reference >= %(warn)s then 'warn' else 'ok' end
           where job = %(job)s
             and as_of = (select max(as_of) from mlpipe.drift where job = %(job)s and as_of <= %(as_of)s)
           returning as_of, feature, psi_reference, level, reference""",
        {"job": spec.name, "as_of": as_of, "warn": thresholds.warn, "fail": thresholds.fail},
    ).fetchall()
    findings = [
        Finding(
            level, day, f"drift of {feature}", psi, getattr(thresholds, level), f"PSI against {reference}"
        )
        for day, feature, psi, level, reference in sorted(levels, key=lambda r: -r[2])
        if level != "ok"
    ]
    metric = spec.model.metric if spec.model.metric in ("roc_auc", "pr_auc") else "roc_auc"
    row = conn.execute(
        sql.SQL(
            """select p.as_of, p.{metric}, m.metrics -> 'test' ->> {name}
               from mlpipe.performance p
               join mlpipe.models m on m.job = p.job and m.model_version = p.model_version
               where p.job = %s and p.arm = 'champion' and p.matured and p.{metric} is not null
                 and p.as_of <= %s
               order by p.as_of desc limit 1"""
        ).format(metric=sql.Identifier(metric), name=sql.Literal(metric)),
        [spec.name, as_of],
    ).fetchone()
    if row and row[2] is not None:
        drop = float(row[2]) - row[1]
        level = drift.level(
            drop, spec.monitoring.performance_drop.warn, spec.monitoring.performance_drop.fail
        )
        if level != "ok":
            findings.append(
                Finding(
                    level,
                    row[0],
                    f"realized {metric} drop",
                    drop,
                    getattr(spec.monitoring.performance_drop, level),
                    f"{row[1]:.3f} against {float(row[2]):.3f} on the model's test set",
                )
            )
    return sorted(findings, key=lambda f: f.level != "fail")


def key_figures(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> dict:
    """The newest day's figures for artifacts and metrics."""
    figures = {"job": spec.name, "as_of": as_of.isoformat()}
    row = conn.execute(
        """select p.as_of, r.run_id, r.population, r.rows_scored, r.rows_quarantined, r.gates ->> 'score_psi'
           from mlpipe.partitions p join mlpipe.runs r using (run_id)
           where p.job = %s and p.kind = 'published' and p.as_of <= %s order by p.as_of desc limit 1""",
        [spec.name, as_of],
    ).fetchone()
    if row:
        figures.update(
            day=row[0].isoformat(),
            run_id=row[1],
            population=row[2],
            rows_scored=row[3],
            rows_quarantined=row[4],
            score_psi_previous=row[5] and float(row[5]),
        )
    worst = conn.execute(
        """select feature, psi_reference, level from mlpipe.drift where job = %(job)s and feature <> 'score'
             and as_of = (select max(as_of) from mlpipe.drift where job = %(job)s and as_of <= %(as_of)s)
           order by psi_reference desc limit 1""",
        {"job": spec.name, "as_of": as_of},
    ).fetchone()
    if worst:
        figures.update(worst_feature=worst[0], worst_feature_psi=worst[1], worst_feature_level=worst[2])
    score = conn.execute(
        """select psi_reference from mlpipe.drift where job = %s and feature = 'score' and as_of <= %s
           order by as_of desc limit 1""",
        [spec.name, as_of],
    ).fetchone()
    figures["score_psi_training"] = score and score[0]
    realized = conn.execute(
        """select as_of, roc_auc from mlpipe.performance where job = %s and arm = 'champion' and matured
             and roc_auc is not null and as_of <= %s order by as_of desc limit 1""",
        [spec.name, as_of],
    ).fetchone()
    if realized:
        figures.update(realized_day=realized[0].isoformat(), realized_roc_auc=realized[1])
    estimated = conn.execute(
        """select estimated_roc_auc from mlpipe.performance where job = %s and arm = 'champion'
             and as_of <= %s order by as_of desc limit 1""",
        [spec.name, as_of],
    ).fetchone()
    figures["estimated_roc_auc"] = estimated and estimated[0]
    figures["entities_without_row"] = entities_without_row(conn, spec, as_of)
    return figures


def entities_without_row(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> int | None:
    """Entities of the population (as of now for today, else as of that day) that the newest published
    day up to then has no row for: new since its run, or quarantined; predictions.<job>_for answers
    them with a fallback, and a top-up (`mlpipe score --new-only`) scores the new ones.

    The population is counted, and the day's rows are the counts its run and its top-ups recorded:
    no anti-join of every key against the day (10M keys spilled to disk for 11-25 s). This assumes the
    day's entities are still in the population; one that left would hide one entity without a row."""
    day = conn.execute(
        """select as_of, run_id, (%(as_of)s = current_date) from mlpipe.partitions
           where job = %(job)s and kind = 'published' and as_of <= %(as_of)s order by as_of desc limit 1""",
        {"as_of": as_of, "job": spec.name},
    ).fetchone()
    if day is None:
        return None
    day_as_of, run_id, today = day
    # A top-up's rows for entities the day had meanwhile are not inserted: its inserted count, not
    # its scored one (a top-up from before that count was kept reports it as rows_scored).
    in_day = conn.execute(
        """select sum(case when kind = 'topup' then coalesce((timings ->> 'rows_inserted')::bigint,
                                                            rows_scored) else rows_scored end)
           from mlpipe.runs
           where run_id = %(run)s
              or (job = %(job)s and as_of = %(day)s and kind = 'topup' and status = 'published'
                  and run_id > %(run)s)""",
        {"run": run_id, "job": spec.name, "day": day_as_of},
    ).fetchone()[0]
    key = sql.Identifier(spec.entity.key)
    population = conn.execute(
        sql.SQL("select count(population.{key}) from ({population}) as population").format(
            population=sql.SQL(spec.sql("population")), key=key
        ),
        {"as_of": conn.execute("select now()").fetchone()[0] if today else as_of},
    ).fetchone()[0]
    return max(population - int(in_day or 0), 0)
