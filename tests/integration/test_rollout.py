"""Progressive rollout on the demo world: days scored in the past so that their outcomes have matured
when the monitor runs as of today; each step's verdict comes from mlpipe.performance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from mlpipe import monitor, registry, report, rollout, train
from mlpipe.db import connection
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job
from tests.helpers import TODAY, days_ago, run_cli, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]
CHURN = Path(__file__).parents[2] / "jobs" / "churn"
# About 1,200 customers were active 45 days ago: a 20% arm has ~220 outcomes, so AUC intervals are
# wide (half-width ~0.18 for the difference) and the margin here is wide too; the model trained on
# broken labels is ranks no better than chance, far past it.
PLAN = {"steps": [0.2, 0.5, 1.0], "bake_days": 1, "min_matured_outcomes": 100, "max_metric_loss": 0.25}
# Each step is judged on its first day: scored 45 days ago, its outcomes have matured by today.
DAYS = [days_ago(45), days_ago(44), days_ago(43)]
# The labels of the wrong customers (each one gets its neighbour's): a broken join in training.
BROKEN_LABELS = """
with labelled as (
    select active.customer_id,
        exists (select from demo.cancellations as c where c.customer_id = active.customer_id
                and c.canceled_at >= %(cutoff)s::timestamptz
                and c.canceled_at < %(cutoff)s::timestamptz + make_interval(days => %(horizon_days)s))::int
            as label
    from active_customers as active
)
select customer_id, coalesce(lag(label) over (order by customer_id), 0) as label from labelled
"""


def _job_copy(folder: Path, **outputs) -> Path:
    shutil.copytree(CHURN, folder)
    spec = yaml.safe_load((folder / "job.yaml").read_text())
    spec["outputs"].update(outputs)
    spec["model"]["search_iterations"] = 1  # the challengers here train in seconds
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "job.yaml"


@pytest.fixture(scope="module")
def rollout_template(pg_server: str, template_db: str, mlpipe_home: Path, tmp_path_factory) -> Iterator[str]:
    """The demo template plus two challengers trained once: churn-v2 (sound, a week earlier) and
    churn-v3 (trained on broken labels); churn-v1 stays the champion."""
    name = f"mlpipe_rollout_{uuid.uuid4().hex[:8]}"
    with connection(pg_server, autocommit=True) as conn:
        create = sql.SQL("create database {} template {}")
        conn.execute(create.format(sql.Identifier(name), sql.Identifier(template_db)))
    url = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    settings = Settings(home=mlpipe_home, database_url=url)
    folder = tmp_path_factory.mktemp("rollout_train")
    sound = load_job(_job_copy(folder / "sound"), settings)
    broken_path = _job_copy(folder / "broken")
    (broken_path.parent / "labels.sql").write_text(BROKEN_LABELS)
    broken = load_job(broken_path, settings)
    with connection(url) as conn:
        v1 = registry.get(conn, "churn", model_version="churn-v1")
        for spec, as_of in ((sound, days_ago(7)), (broken, TODAY)):
            train.train(conn, settings, spec, as_of)
        registry.set_alias(conn, "churn", "champion", v1.model_id, "test setup")
        conn.execute("delete from mlpipe.model_aliases where alias = 'challenger'")
        conn.commit()
    yield name
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def url(pg_server: str, rollout_template: str, mlpipe_home: Path, monkeypatch) -> Iterator[str]:
    """A fresh copy of the rollout template; MLPIPE_* point at it for flows and the CLI."""
    name = f"mlpipe_test_{uuid.uuid4().hex[:8]}"
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(rollout_template)
            )
        )
    copy = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    monkeypatch.setenv("MLPIPE_DATABASE_URL", copy)
    monkeypatch.setenv("MLPIPE_HOME", str(mlpipe_home))
    monkeypatch.setenv("MLPIPE_CHUNK_ROWS", "400")
    yield copy
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection]:
    with connection(url, autocommit=True) as c:
        yield c


@pytest.fixture
def job(tmp_path: Path) -> Path:
    return _job_copy(tmp_path / "churn", rollout=PLAN)


def _spec(job: Path) -> JobSpec:
    return load_job(job, Settings())


def _day(job: Path, conn, day: date) -> rollout.Check | None:
    """One day as the daily deployment runs it: score, then monitor (as of today: the outcomes have
    matured) and advance on a connection of their own, as the monitor flow does."""
    score(str(job), day)
    return _monitor(job)


def _monitor(job: Path) -> rollout.Check | None:
    spec = _spec(job)
    with connection(os.environ["MLPIPE_DATABASE_URL"], autocommit=True) as own:  # the monitor's lock
        monitor.monitor(own, spec, TODAY)
        return rollout.advance(own, spec, TODAY)


def _arms(conn, day: date) -> dict[str, int]:
    rows = conn.execute(
        "select model_version, count(*) from predictions.churn_history where as_of = %s group by 1", [day]
    ).fetchall()
    return dict(rows)


def _flips(conn) -> list:
    """Entities that went back from the challenger to the champion on a later day."""
    return conn.execute(
        """select entity_id from (
               select entity_id, model_version,
                      lag(model_version) over (partition by entity_id order by as_of) as before
               from predictions.churn_history) as t
           where before <> 'churn-v1' and model_version = 'churn-v1'"""
    ).fetchall()


def _alias_rows(conn) -> list[tuple]:
    return conn.execute(
        """select h.alias, m.model_version, h.share, h.changed_by, h.reason from mlpipe.alias_history h
           left join mlpipe.models m on m.model_id = h.model_id
           where h.share is not null order by h.change_id"""
    ).fetchall()


def test_a_sound_challenger_walks_up_to_champion(conn, job, url):
    started = run_cli("models", "rollout", "start", "churn-v2", "--job", str(job), "--reason", "new cutoffs")
    assert started.returncode == 0, started.stderr
    assert "step 1 of 3 (20%)" in started.stdout

    first = _day(job, conn, DAYS[0])
    arms = _arms(conn, DAYS[0])
    assert 0.15 < arms["churn-v2"] / sum(arms.values()) < 0.25
    assert first.verdict == rollout.PASS, first.reasons
    assert rollout.active(conn, "churn").share == 0.5

    # The next day's monitor runs in another process: the rollout's state is all in PostgreSQL.
    score(str(job), DAYS[1])
    arms = _arms(conn, DAYS[1])
    assert 0.45 < arms["churn-v2"] / sum(arms.values()) < 0.55
    code = (
        "import sys; from datetime import date; from mlpipe import monitor, rollout; "
        "from mlpipe.db import connect; from mlpipe.settings import Settings; "
        "from mlpipe.spec import load_job; spec = load_job(sys.argv[1], Settings()); "
        "c = connect(sys.argv[2], autocommit=True); "
        "monitor.monitor(c, spec, date.today()); print(rollout.advance(c, spec, date.today()).verdict)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(job), url], capture_output=True, text=True, timeout=300
    )
    assert other.stdout.strip() == "pass", other.stderr[-2000:]

    assert registry.champion(conn, "churn").model_version == "churn-v2"
    assert registry.challenger(conn, "churn") is None
    assert rollout.latest(conn, "churn").status == "promoted"
    score(str(job), DAYS[2])
    assert set(_arms(conn, DAYS[2])) == {"churn-v2"}
    assert _flips(conn) == [], "an entity went back to the champion within the rollout"

    steps = _alias_rows(conn)
    assert [(alias, share) for alias, _, share, _, _ in steps] == [
        ("challenger", 0.2),
        ("challenger", 0.5),
        ("champion", 1.0),
    ]
    assert steps[1][3] == rollout.MONITOR and "lower bound of the difference" in steps[1][4]
    status = run_cli("models", "rollout", "status", "--job", str(job), "--json")
    info = json.loads(status.stdout)
    assert info["status"] == "promoted" and info["last_check"]["verdict"] == "pass"
    html = report.build_report(conn, _spec(job), as_of=TODAY)
    assert "rollout share" in html and "50%" in html


@pytest.mark.parametrize(
    ("guard", "decided_by"),
    [
        ({"max_estimated_loss": 1.0}, "lower bound of the difference"),  # outcomes decide
        ({}, "estimated roc_auc loss"),  # the leading signal sees it first
    ],
)
def test_a_challenger_trained_on_broken_labels_is_rolled_back_on_its_first_matured_day(
    conn, tmp_path, guard, decided_by
):
    job = _job_copy(tmp_path / "churn", rollout={**PLAN, "guard": guard})
    rollout.start(conn, _spec(job), "churn-v3", "try it", "tester")
    check = _day(job, conn, DAYS[0])
    assert check.verdict == rollout.FAIL and decided_by in check.reasons[0], check
    assert rollout.latest(conn, "churn").status == "rolled_back"
    assert rollout.active(conn, "churn") is None
    assert registry.champion(conn, "churn").model_version == "churn-v1"
    assert registry.challenger(conn, "churn") is None

    score(str(job), DAYS[1])
    assert set(_arms(conn, DAYS[1])) == {"churn-v1"}, "the champion keeps everything after a rollback"
    alias, version, share, by, why = _alias_rows(conn)[-1]
    assert (alias, version, share, by) == ("challenger", None, 0.0, rollout.MONITOR)
    assert why.startswith("rollout 1 failed at step 1 of 3 (20%)") and decided_by in why


def test_pause_holds_the_share_and_abort_gives_everything_back(conn, job):
    rollout.start(conn, _spec(job), "churn-v2", "try it", "tester")
    paused = run_cli("models", "rollout", "pause", "--job", str(job), "--reason", "holiday freeze")
    assert paused.returncode == 0, paused.stderr
    assert _day(job, conn, DAYS[0]) is None, "a paused rollout is not judged"
    assert rollout.active(conn, "churn").status == "paused"
    assert 0.15 < _arms(conn, DAYS[0])["churn-v2"] / sum(_arms(conn, DAYS[0]).values()) < 0.25

    assert run_cli("models", "rollout", "resume", "--job", str(job)).returncode == 0
    assert _monitor(job).verdict == rollout.PASS
    assert rollout.active(conn, "churn").share == 0.5

    aborted = run_cli("models", "rollout", "abort", "--job", str(job), "--reason", "business asked")
    assert aborted.returncode == 0, aborted.stderr
    assert "aborted" in aborted.stdout and "share now 0%" in aborted.stdout
    score(str(job), DAYS[1])
    assert set(_arms(conn, DAYS[1])) == {"churn-v1"}, "the rollout is over: the champion has everyone"
    reasons = [row[4] for row in _alias_rows(conn)]
    assert "holiday freeze" in reasons[1] and "business asked" in reasons[-1]
    table = run_cli("models", "rollout", "status", "--job", str(job))
    assert "aborted" in table.stdout and "business asked" in table.stdout


def _state(conn) -> tuple:
    return (
        conn.execute("select count(*) from mlpipe.rollouts").fetchone()[0],
        conn.execute("select count(*) from mlpipe.alias_history").fetchone()[0],
        conn.execute("select alias, model_id from mlpipe.model_aliases order by 1, 2").fetchall(),
    )


def test_bad_rollout_requests_are_one_line_and_change_nothing(conn, job, tmp_path):
    bad_steps = _job_copy(tmp_path / "bad", rollout={**PLAN, "steps": [0.5, 0.2, 1.0]})
    cases = [
        (("churn-v1", str(job)), "churn-v1 is already the champion of churn"),
        (("titanic-v1", str(job)), "titanic-v1 is a model of job titanic, not churn"),
        (("churn-v2", str(bad_steps)), "must increase strictly"),
        (("churn-v2", str(CHURN / "job.yaml")), "declares no outputs.rollout"),
    ]
    before = _state(conn)
    for (version, spec), says in cases:
        result = run_cli("models", "rollout", "start", version, "--job", spec, "--reason", "x")
        assert result.returncode == 1 and says in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _state(conn) == before

    rollout.start(conn, _spec(job), "churn-v2", "first", "tester")
    before = _state(conn)
    second = run_cli("models", "rollout", "start", "churn-v3", "--job", str(job), "--reason", "second")
    assert second.returncode == 1
    assert "rollout 1 of churn-v2 is running for job churn (step 1 of 3 (20%))" in second.stderr
    assert _state(conn) == before
