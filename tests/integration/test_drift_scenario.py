"""The drift scenario end to end: a stable world for 60 scored days, then a low-activity channel and a
price rise. The planted input is flagged within 3 scored days, nothing is flagged before, realized AUC
falls after the change while the estimate (which cannot see a new relationship) tracks it before."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mlpipe.db import connection, migrate
from mlpipe.demo.scenario import PLANTED, ScenarioSummary, run_drift_scenario
from mlpipe.report import build_report
from mlpipe.settings import Settings
from mlpipe.spec import load_job

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

ENTITIES = 3000
DAYS = 120  # the shift is half way: 60 stable scored days, then 60 after it
HORIZON = 30


@pytest.fixture(scope="module")
def scenario(pg_server: str, mlpipe_home: Path) -> Iterator[tuple[ScenarioSummary, str]]:
    """The scenario run once, in its own database (the flows read MLPIPE_* from the environment)."""
    name = f"mlpipe_drift_{uuid.uuid4().hex[:8]}"
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    migrate(url)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLPIPE_DATABASE_URL", url)
        env.setenv("MLPIPE_HOME", str(mlpipe_home))
        env.delenv("MLPIPE_CHUNK_ROWS", raising=False)
        started = time.monotonic()
        summary = run_drift_scenario(url, Settings(), entities=ENTITIES, days=DAYS, seed=42)
        print(f"drift scenario: {time.monotonic() - started:.0f} s, {summary.as_dict()}")
        yield summary, url
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def db(scenario) -> Iterator[psycopg.Connection]:
    with connection(scenario[1], autocommit=True) as c:
        yield c


def _auc(db, where: str, params: list) -> tuple[float, float, int]:
    """Mean realized and estimated AUC of the champion's matured days matching `where`, and how many."""
    query = sql.SQL(
        """select avg(roc_auc), avg(estimated_roc_auc), count(*) from mlpipe.performance
           where job = 'churn' and arm = 'champion' and matured and roc_auc is not null and {}"""
    ).format(sql.SQL(where))
    return db.execute(query, params).fetchone()


def test_every_day_is_scored_and_monitored(scenario, db):
    summary, _ = scenario
    assert summary.days_scored == DAYS
    monitored = db.execute("select count(distinct as_of) from mlpipe.drift where job = 'churn'").fetchone()[0]
    assert monitored == DAYS


def test_planted_input_fails_within_three_scored_days_of_the_shift(scenario, db):
    summary, _ = scenario
    levels = dict(
        db.execute(
            """select as_of, level from mlpipe.drift where job = 'churn' and feature = %s
               and as_of >= %s order by as_of""",
            [PLANTED, summary.shift_day],
        ).fetchall()
    )
    first_fail = min(day for day, level in levels.items() if level == "fail")
    assert first_fail == summary.first_fail_day
    assert first_fail - summary.shift_day <= timedelta(days=3), levels
    assert levels[summary.shift_day] == "ok", "the shift day's population has no channel customer yet"


def test_no_false_alarm_over_the_stable_period(scenario, db):
    summary, _ = scenario
    stable_days, flagged = db.execute(
        """select count(distinct as_of), count(*) filter (where level <> 'ok')
           from mlpipe.drift where job = 'churn' and feature <> 'score' and as_of < %s""",
        [summary.shift_day],
    ).fetchone()
    worst = db.execute(
        """select feature, as_of, psi_reference from mlpipe.drift
           where job = 'churn' and feature <> 'score' and as_of < %s order by psi_reference desc limit 1""",
        [summary.shift_day],
    ).fetchone()
    assert stable_days == DAYS // 2 >= 60
    assert flagged == 0 == summary.stable_false_alarms, worst


def test_realized_auc_falls_after_the_relationship_changes(scenario, db):
    summary, _ = scenario
    clean = summary.shift_day - timedelta(days=HORIZON)  # label windows wholly before the price rise
    before, _, before_days = _auc(db, "as_of <= %s", [clean])
    after, estimated_after, after_days = _auc(db, "as_of >= %s", [summary.shift_day])
    assert before_days >= 25 and after_days >= 25
    assert after < before - 0.03, (before, after)
    assert (before, after) == pytest.approx((summary.realized_auc_before, summary.realized_auc_after))


def test_estimate_tracks_realized_auc_on_the_stable_days(scenario, db):
    summary, _ = scenario
    clean = summary.shift_day - timedelta(days=HORIZON)
    realized, estimated, days = _auc(db, "as_of <= %s", [clean])
    assert days >= 25
    assert abs(estimated - realized) <= 0.03, (realized, estimated)


def test_the_report_shows_the_drift_and_the_fall_in_realized_auc(scenario, db):
    summary, _ = scenario
    html = build_report(db, load_job("churn", Settings()), days=DAYS)
    first, last = (
        float(v)
        for v in re.findall(
            r"Realized ROC AUC, mean of 7 matured days: ([0-9.]+) from "
            r"[0-9-]+, ([0-9.]+) to",
            html,
        )[0]
    )
    assert last < first - 0.03, (first, last)
    assert 'data-chart="performance"' in html and 'data-chart="drift-' in html
    newest_drift = html[html.index("Drift") :]
    assert summary.planted_feature in newest_drift and "fail" in newest_drift
