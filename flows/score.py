"""Daily scoring flow: plan under the (job, day) lock, score chunks through the task runner, publish."""

from __future__ import annotations

from datetime import date

import psycopg
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from mlpipe.chunks import ChunkResult, RunContext, score_chunk
from mlpipe.db import DatabaseError, database_url
from mlpipe.extract import Chunk
from mlpipe.score import ScoringRun
from mlpipe.settings import Settings
from mlpipe.spec import load_job


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
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_is_io_error,
    cache_policy=NO_CACHE,
)
def score_chunk_task(ctx: RunContext, chunk: Chunk) -> ChunkResult:
    """One key range; each attempt writes all of its rows or none, so a retry is safe."""
    return score_chunk(ctx, chunk)


@flow(name="mlpipe-score", task_runner=ThreadPoolTaskRunner(max_workers=2))
def score_flow(job: str = "churn", as_of: date | None = None, model_version: str | None = None) -> dict:
    """Score the job's whole population as of `as_of` (default today) and publish it."""
    settings = Settings()
    spec = load_job(job, settings)
    with ScoringRun.begin(
        database_url(settings), settings, spec, as_of or date.today(), model_version
    ) as run:
        futures = score_chunk_task.map(unmapped(run.context), run.chunks)
        return run.finish([future.result() for future in futures]).as_dict()


def with_workers(settings: Settings):
    """The score flow with the task runner the settings ask for (threads, or a Dask cluster)."""
    if settings.dask_address:
        from prefect_dask import DaskTaskRunner

        return score_flow.with_options(task_runner=DaskTaskRunner(address=settings.dask_address))
    return score_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=settings.workers))
