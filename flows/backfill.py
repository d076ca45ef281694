"""Backfill flow: score each day of a range as of that day; the latest view never moves backwards."""

from __future__ import annotations

from datetime import date

from prefect import flow

from flows.score import score_flow
from mlpipe.score import days_between


@flow(name="mlpipe-backfill")
def backfill_flow(job: str, start: date, end: date, model_version: str | None = None) -> list[dict]:
    """One scoring subflow per day, oldest first."""
    return [score_flow(job=job, as_of=day, model_version=model_version) for day in days_between(start, end)]
