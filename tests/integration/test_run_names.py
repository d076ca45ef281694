"""Runs read in Prefect's UI as the operator thinks of them: read back from the Prefect API after a
CLI run (its name, tags, parameters, chunk task names, artifacts and mlpipe's own log lines), after a
failed gate, a training run, a backfill, and a run served from a deployment."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.runner import Runner

from deployments.deploy import build_deployments
from mlpipe.prefect_api import run_url
from tests.helpers import days_ago, run_cli, score

pytestmark = [pytest.mark.integration]

CHUNK_NAME = re.compile(r"chunk \d+ \[(min|\d+), (max\]|\d+\))")


def _read(flow_run_id: UUID) -> dict:
    """The flow run, its task runs, artifacts and log lines, as the UI shows them."""

    async def read() -> dict:
        async with get_client() as client:
            only = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            logs = await client.read_logs(log_filter=of_run, sort=LogSort.TIMESTAMP_ASC)
            return {
                "run": await client.read_flow_run(flow_run_id),
                "tasks": await client.read_task_runs(flow_run_filter=only),
                "artifacts": {a.key: a for a in await client.read_artifacts(flow_run_filter=only)},
                "logs": [log.message for log in logs],
            }

    return asyncio.run(read())


def _flow_run_of(conn, run_id: int) -> UUID:
    query = "select flow_run_id from mlpipe.runs where run_id = %s"
    flow_run_id = conn.execute(query, [run_id]).fetchone()[0]
    assert flow_run_id is not None, "the run keeps its Prefect flow run id"
    return flow_run_id


def _cli(prefect_api: str, *args: str):
    return run_cli(*args, env={"PREFECT_API_URL": prefect_api})


def test_a_cli_score_run_reads_as_job_and_day_with_its_chunks_artifact_and_log(conn, prefect_api):
    day = days_ago(2)
    done = _cli(prefect_api, "score", "--job", "churn", "--as-of", day.isoformat())
    assert done.returncode == 0, done.stderr
    assert "INFO" not in done.stdout + done.stderr, "the console stays quiet: the lines go to the run's log"
    run_id, chunks = conn.execute(
        "select run_id, chunks from mlpipe.runs where kind = 'score' and as_of = %s", [day]
    ).fetchone()
    shown = _read(_flow_run_of(conn, run_id))

    flow_run = shown["run"]
    assert flow_run.name == f"score churn {day}"
    assert {"churn", "score", "mlpipe"} <= set(flow_run.tags)
    assert flow_run.parameters["job"] == "churn", "the job's name, not the path of its spec"
    chunk_names = sorted(t.name for t in shown["tasks"])
    assert len(chunk_names) == chunks > 1
    assert all(CHUNK_NAME.fullmatch(name) for name in chunk_names), chunk_names

    table = shown["artifacts"]["churn-score"]
    assert table.type == "table"
    items = {(row["section"], row["item"]) for row in _rows(table.data)}
    expected = {("run", "population"), ("run", "rows_scored"), ("timings", "total_s"), ("gates", "passed")}
    assert expected <= items
    assert any(section == "quarantine" for section, _ in items)

    logs = "\n".join(shown["logs"])
    assert f"churn as of {day} with churn-v1" in logs, "the plan line"
    assert re.search(r"chunk 0 \[min, \d+\): [\d,]+ scored", logs), "a line per chunk"
    assert f"run {run_id} gates passed" in logs
    assert f"run {run_id} published churn as of {day}" in logs
    assert run_url(str(flow_run.id)).endswith(f"/runs/flow-run/{flow_run.id}")


def _rows(data) -> list[dict]:
    import json

    return json.loads(data) if isinstance(data, str) else data


def test_a_failed_gate_shows_its_reason_in_the_run_log_and_table(conn, prefect_api):
    score("churn", days_ago(3))
    conn.execute(  # everyone suddenly fails payments: the score distribution jumps
        """insert into demo.payments (customer_id, charged_at, amount_cents, status)
           select customer_id, now() - interval '5 days', 999, 'failed' from demo.customers
           cross join generate_series(1, 3)"""
    )
    day = days_ago(1)
    failed = _cli(prefect_api, "score", "--job", "churn", "--as-of", day.isoformat())
    assert failed.returncode == 1
    assert "flow_runs" not in failed.stdout + failed.stderr, "the console has the CLI's own error line only"
    run_id = conn.execute(
        "select run_id from mlpipe.runs where kind = 'score' and as_of = %s and status = 'failed'", [day]
    ).fetchone()[0]
    shown = _read(_flow_run_of(conn, run_id))

    assert shown["run"].state.is_failed()
    logs = "\n".join(shown["logs"])
    assert f"run {run_id} gates failed" in logs and "score_psi" in logs
    assert f"score churn failed: GateFailed: the output gate of run {run_id}" in logs
    rows = _rows(shown["artifacts"]["churn-score"].data)
    assert {"section": "gates", "item": "passed", "value": "False"} in rows
    assert any(row["section"] == "gates" and row["item"] == "failure" for row in rows)


def test_a_cli_backfill_is_one_parent_run_with_a_child_run_per_day(conn, prefect_api):
    first, last = days_ago(3), days_ago(2)
    done = _cli(prefect_api, "backfill", "--job", "churn", "--start", str(first), "--end", str(last))
    assert done.returncode == 0, done.stderr
    child_ids = [
        row[0]
        for row in conn.execute("select flow_run_id from mlpipe.runs where kind = 'score' order by as_of")
    ]
    children = [_read(i)["run"] for i in child_ids]
    assert [c.name for c in children] == [f"score churn {first}", f"score churn {last}"]
    parent_ids = {c.parent_task_run_id for c in children}
    assert None not in parent_ids

    async def parent():
        async with get_client() as client:
            task = await client.read_task_run(children[0].parent_task_run_id)
            return await client.read_flow_run(task.flow_run_id)

    backfill = asyncio.run(parent())
    assert backfill.name == f"backfill churn {first}..{last}"
    assert {"churn", "backfill"} <= set(backfill.tags)


def test_a_cli_training_run_carries_the_candidates_table(conn, prefect_api):
    day = days_ago(0)
    done = _cli(prefect_api, "train", "--job", "titanic", "--as-of", day.isoformat())
    assert done.returncode == 0, done.stderr
    run_id = conn.execute(
        "select max(run_id) from mlpipe.runs where kind = 'train' and job = 'titanic'"
    ).fetchone()[0]
    shown = _read(_flow_run_of(conn, run_id))

    assert shown["run"].name == f"train titanic {day}"
    assert {"titanic", "train"} <= set(shown["run"].tags)
    rows = _rows(shown["artifacts"]["titanic-candidates"].data)
    models = [row["model"] for row in rows]
    assert "baseline rule" in models and any(m.endswith("(chosen)") for m in models)
    assert {"roc_auc", "pr_auc", "log_loss", "brier"} <= set(rows[0])
    assert any("registered titanic-v" in line for line in shown["logs"])


def test_a_served_deployment_run_logs_mlpipe_lines(conn, prefect_api, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[2]))  # the run's process imports flows/
    monkeypatch.setenv("MLPIPE_CHUNK_ROWS", "1000")
    daily = next(d for d in build_deployments("churn") if d.name == "churn-daily")
    day = days_ago(1)

    async def serve_one_run():
        runner = Runner(name="mlpipe-test-logs")
        deployment_id = await runner.aadd_deployment(daily)
        scheduled = await run_deployment(
            deployment_id, parameters={"job": "churn", "as_of": day.isoformat(), "monitor": False}, timeout=0
        )
        await runner.start(run_once=True)
        return scheduled.id

    sigterm = signal.getsignal(signal.SIGTERM)  # the runner takes SIGTERM over; give it back
    try:
        flow_run_id = asyncio.run(serve_one_run())
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    shown = _read(flow_run_id)

    assert shown["run"].state.is_completed(), shown["run"].state
    assert shown["run"].name == f"score churn {day}"
    assert {"churn", "score"} <= set(shown["run"].tags)
    logs = "\n".join(shown["logs"])
    assert f"churn as of {day} with churn-v1" in logs and "published churn" in logs
    recorded = conn.execute(
        "select flow_run_id from mlpipe.runs where kind = 'score' and as_of = %s", [day]
    ).fetchone()[0]
    assert recorded == flow_run_id


def test_a_failed_training_run_keeps_its_flow_run_id(conn, prefect_api):
    # Long before the demo world began: no labeled rows, so the training run fails once it started.
    failed = _cli(prefect_api, "train", "--job", "churn", "--as-of", "2001-01-01")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run_id, status = conn.execute(
        "select run_id, status from mlpipe.runs where kind = 'train' order by run_id desc limit 1"
    ).fetchone()
    assert status == "failed"
    shown = _read(_flow_run_of(conn, run_id))
    assert shown["run"].name == "train churn 2001-01-01"
    assert shown["run"].state.is_failed()
