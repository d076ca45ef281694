"""The schedules register against a real local Prefect API with their cron expressions, and a run
served from them follows the serving process's settings."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.runner import Runner

from deployments.deploy import SCORE_CRON, TOPUP_CRON, TRAIN_CRON, build_deployments
from tests.fixtures.fix_dask import chunk_writers
from tests.helpers import days_ago

pytestmark = [pytest.mark.integration]


def test_deployments_register_with_their_schedules(prefect_api):
    ids = [deployment.apply() for deployment in build_deployments("churn")]

    async def read():
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    registered = {d.name: d for d in asyncio.run(read())}
    assert set(registered) == {"churn-monthly", "churn-daily", "churn-topup"}
    crons = {
        name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] for name, d in registered.items()
    }
    assert crons == {
        "churn-monthly": [(TRAIN_CRON, "UTC")],
        "churn-daily": [(SCORE_CRON, "UTC")],
        "churn-topup": [(TOPUP_CRON, "UTC")],
    }
    assert TRAIN_CRON == "0 3 1 * *", "training runs on the 1st of each month"
    assert registered["churn-monthly"].parameters == {"job": "churn"}
    assert registered["churn-daily"].parameters == {"job": "churn", "monitor": True}
    assert registered["churn-topup"].parameters == {"job": "churn", "new_only": True}


def test_a_served_daily_run_scores_on_the_dask_cluster(conn, dask_cluster, monkeypatch):
    """The process serving the deployments has MLPIPE_DASK_ADDRESS: its scheduled runs use that cluster."""
    address, worker_pids = dask_cluster
    monkeypatch.setenv("MLPIPE_DASK_ADDRESS", address)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))  # the run's process imports flows/
    daily = next(d for d in build_deployments("churn") if d.name == "churn-daily")
    day = days_ago(1)

    async def serve_one_run():
        runner = Runner(name="mlpipe-test")
        deployment_id = await runner.aadd_deployment(daily)
        scheduled = await run_deployment(
            deployment_id, parameters={"job": "churn", "as_of": day.isoformat()}, timeout=0
        )
        await runner.start(run_once=True)  # executes the due run in a subprocess, as `serve` does
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[scheduled.id]))
            )
            return await client.read_flow_run(scheduled.id), artifacts

    sigterm = signal.getsignal(signal.SIGTERM)  # the runner takes SIGTERM over; give it back
    try:
        flow_run, artifacts = asyncio.run(serve_one_run())
    finally:
        signal.signal(signal.SIGTERM, sigterm)

    assert flow_run.state.is_completed(), flow_run.state
    run_id, chunks = conn.execute(
        "select run_id, chunks from mlpipe.runs where kind = 'score' and as_of = %s and status = 'published'",
        [day],
    ).fetchone()
    assert chunks > 1
    assert chunk_writers(conn, run_id) <= worker_pids, "every chunk was written by a Dask worker process"
    # The daily run then monitors: recorded, and its figures and findings shown on the run in the UI.
    assert conn.execute(
        "select status from mlpipe.runs where kind = 'monitor' and as_of = %s", [day]
    ).fetchone() == ("succeeded",)
    shown = {a.key: a for a in artifacts}
    assert {"churn-monitor", "churn-findings"} <= set(shown)
    assert shown["churn-monitor"].type == "table" and "rows_scored" in str(shown["churn-monitor"].data)
