"""The drift scenario: a demo world that changes on a known day, scored and monitored day by day.

The world's history ends today. The churn model is trained as of the first scored day; every day of
the period is then scored with the real scoring flow and the monitor runs as of that day, as a daily
deployment would. Half way through (`shift_day`) a new acquisition channel brings customers with far
fewer sessions (sessions_30d drifts) and a price rise makes the premium plan churn more (the inputs do not
show it: realized AUC falls, the estimate does not). The flows read their settings from the
environment (MLPIPE_DATABASE_URL, MLPIPE_HOME), so those must point where `url` and `settings` do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta

import psycopg

from mlpipe import monitor, train
from mlpipe.db import connection
from mlpipe.demo import world
from mlpipe.errors import UsageError
from mlpipe.settings import Settings
from mlpipe.spec import load_job

log = logging.getLogger(__name__)

JOB = "churn"
PLANTED = "sessions_30d"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class ScenarioSummary:
    first_day: date
    last_day: date
    shift_day: date
    days_scored: int
    planted_feature: str
    first_fail_day: date | None  # first scored day the planted input's drift level was fail
    stable_false_alarms: int  # input drift rows at warn or fail before shift_day
    realized_auc_before: float | None  # matured days whose label window closed before shift_day
    realized_auc_after: float | None  # matured days from shift_day on
    estimated_auc_before: float | None
    model_version: str
    seconds: float

    def as_dict(self) -> dict:
        return {k: v.isoformat() if isinstance(v, date) else v for k, v in asdict(self).items()}


def run_drift_scenario(
    url: str,
    settings: Settings,
    entities: int = 5000,
    days: int = 120,
    seed: int = 42,
    progress: Progress | None = None,
) -> ScenarioSummary:
    """Generate the drifting world, train as of the first scored day, then score and monitor each day."""
    from flows.score import score_flow  # Prefect: imported only when the scenario runs

    if days < 4:
        raise UsageError(f"the drift scenario needs at least 4 scored days, not {days}")
    started = time.monotonic()
    report = progress or (lambda stage, done, total: None)
    today = date.today()
    first = today - timedelta(days=days - 1)
    scenario = world.DriftScenario(shift_day=first + timedelta(days=days // 2))
    spec = load_job(JOB, settings)
    with connection(url) as conn:
        report("world", 0, 1)
        world.generate(conn, entities, seed=seed, end=today, scenario=scenario)
        conn.commit()
        report("train", 0, 1)
        trained = train.train(conn, settings, spec, first)
    if not trained.promoted:
        raise UsageError(f"the scenario's model was not promoted: {trained.decision}")
    scored = [first + timedelta(days=n) for n in range(days)]
    with connection(url, autocommit=True) as conn:
        for n, day in enumerate(scored):
            report("score and monitor", n, days)
            score_flow(job=JOB, as_of=day)
            monitor.monitor(conn, spec, day)
        report("score and monitor", days, days)
        summary = summarize(conn, spec.name, scenario.shift_day, spec.training.horizon_days, first, today)
    summary = ScenarioSummary(
        **summary, model_version=trained.model.model_version, seconds=round(time.monotonic() - started, 1)
    )
    log.info("drift scenario: %s", summary.as_dict())
    return summary


def summarize(
    conn: psycopg.Connection, job: str, shift_day: date, horizon_days: int, first: date, last: date
) -> dict:
    """The scenario's figures from mlpipe.drift and mlpipe.performance (what an analyst would query)."""
    first_fail = conn.execute(
        """select min(as_of) from mlpipe.drift
           where job = %s and feature = %s and level = 'fail' and as_of >= %s""",
        [job, PLANTED, shift_day],
    ).fetchone()[0]
    false_alarms = conn.execute(
        """select count(*) from mlpipe.drift
           where job = %s and feature <> 'score' and level <> 'ok' and as_of < %s""",
        [job, shift_day],
    ).fetchone()[0]
    before, estimated_before = conn.execute(
        """select avg(roc_auc), avg(estimated_roc_auc) from mlpipe.performance
           where job = %s and arm = 'champion' and matured and as_of <= %s""",
        [job, shift_day - timedelta(days=horizon_days)],
    ).fetchone()
    after = conn.execute(
        """select avg(roc_auc) from mlpipe.performance
           where job = %s and arm = 'champion' and matured and as_of >= %s""",
        [job, shift_day],
    ).fetchone()[0]
    days_scored = conn.execute(
        """select count(*) from mlpipe.partitions
           where job = %s and kind = 'published' and as_of between %s and %s""",
        [job, first, last],
    ).fetchone()[0]
    return dict(
        first_day=first,
        last_day=last,
        shift_day=shift_day,
        days_scored=days_scored,
        planted_feature=PLANTED,
        first_fail_day=first_fail,
        stable_false_alarms=false_alarms,
        realized_auc_before=before,
        realized_auc_after=after,
        estimated_auc_before=estimated_before,
    )
