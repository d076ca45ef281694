"""Daily scoring flow: plan under the (job, day) lock, score chunks through the task runner, publish.

Every caller (the CLI, a deployment served by `deployments/deploy.py`, the backfill flow, the demo) runs
the same `score_flow`; where its chunk tasks run is chosen by `task_runner_for` from the settings read
when the run starts, so a served deployment follows MLPIPE_WORKERS / MLPIPE_DASK_ADDRESS of its process.
"""

from __future__ import annotations

from datetime import date

import psycopg
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mlpipe import flow_runs, metrics
from mlpipe.chunks import ChunkResult, RunContext, score_chunk
from mlpipe.db import DatabaseError, connection, database_url
from mlpipe.extract import Chunk
from mlpipe.score import ScoringRun
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.topup import TopUp


def _is_io_error(task, task_run, state) -> bool:
    """Retry a chunk only when the database connection failed, not when its data did."""
    try:
        state.result()
    except (psycopg.OperationalError, DatabaseError):
        return True
    except Exception:  # noqa: BLE001 (any other error is the chunk's data or code: retrying will not help)
        return False
    return False


@task(
    name="score-chunk",
    task_run_name=flow_runs.chunk_run_name,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_is_io_error,
    cache_policy=NO_CACHE,
)
def score_chunk_task(ctx: RunContext, chunk: Chunk) -> ChunkResult:
    """One key range; each attempt writes all of its rows or none, so a retry is safe."""
    result = score_chunk(ctx, chunk)
    flow_runs.log_chunk(chunk, result)
    return result


def task_runner_for(settings: Settings) -> TaskRunner:
    """Where chunk tasks run: the Dask cluster at MLPIPE_DASK_ADDRESS, else MLPIPE_WORKERS threads."""
    if settings.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=settings.dask_address)
    return ThreadPoolTaskRunner(max_workers=settings.workers)


# The flow's own runner is unused: a decorator's runner is fixed at import time, and chunk tasks must
# follow the settings of the process that runs the flow, so they go through `task_runner_for` below.
@flow(name="mlpipe-score", flow_run_name=flow_runs.score_run_name)
def score_flow(
    job: str = "churn",
    as_of: date | None = None,
    model_version: str | None = None,
    monitor: bool = False,
    new_only: bool = False,
) -> dict:
    """Score the job's whole population as of `as_of` (default today) and publish it; with `monitor`,
    then bring its drift and performance up to date (the daily deployment does). With `new_only`, a
    top-up: only the entities of the population as of now that the live day lacks, inserted into it."""
    flow_runs.tag_run("topup" if new_only else "score", job)
    with flow_runs.run_logs("score", job):
        return _score(job, as_of, model_version, monitor, new_only)


def _score(job: str, as_of: date | None, model_version: str | None, monitor: bool, new_only: bool) -> dict:
    settings = Settings()
    spec = load_job(job, settings)
    day = as_of or date.today()
    url = database_url(settings)
    run = None
    try:
        with (
            TopUp.begin(url, settings, spec, as_of, model_version)
            if new_only
            else ScoringRun.begin(url, settings, spec, day, model_version) as run,
            task_runner_for(settings) as runner,
        ):
            flow_runs.record_flow_run(run.conn, run.run_id)
            futures = runner.map(score_chunk_task, {"ctx": unmapped(run.context), "chunk": run.chunks})
            summary = run.finish([future.result() for future in futures]).as_dict()
    except BaseException:
        metrics.record_failure(settings, spec.name, "topup" if new_only else "score")
        if run is not None and run.run_id is not None:
            flow_runs.report_failed_run(url, job, run.run_id)
        raise
    if new_only:  # a top-up's success must not stand in for the daily run's in the alerts
        return summary
    metrics.record_score(settings, summary)
    with connection(url, autocommit=True) as conn:
        flow_runs.score_report(conn, job, summary["run_id"])
    flow_runs.log_published(summary)
    if monitor:
        from flows.monitor import monitor_task  # its report charts take a second to import

        summary["monitor"] = monitor_task(job, day)
    return summary
