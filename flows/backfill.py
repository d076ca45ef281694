"""Backfill flow: score each day of a range as of that day; the latest view never moves backwards."""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.score import score_flow
from mlpipe import flow_runs
from mlpipe.score import days_between


@flow(name="mlpipe-backfill", flow_run_name=flow_runs.backfill_run_name)
def backfill_flow(job: str, start: date, end: date, model_version: str | None = None) -> list[dict]:
    """One scoring subflow per day (a child run each: `score JOB DAY`), oldest first."""
    flow_runs.tag_run("backfill", job)
    with flow_runs.run_logs("backfill", job):
        return [
            score_flow(job=job, as_of=day, model_version=model_version) for day in days_between(start, end)
        ]
