"""Monthly training flow: build the training set, fit and evaluate candidates, register, promote."""

from __future__ import annotations

from datetime import date

from prefect import flow, task

from mlpipe import train
from mlpipe.db import connection, database_url
from mlpipe.settings import Settings
from mlpipe.spec import load_job


@task(name="train-and-register")
def train_task(job: str, as_of: date) -> dict:
    settings = Settings()
    spec = load_job(job, settings)
    with connection(database_url(settings)) as conn:
        result = train.train(conn, settings, spec, as_of)
    return {
        "model_version": result.model.model_version,
        "promoted": result.promoted,
        "decision": result.decision,
        "test": {k: v for k, v in result.metrics["test"].items() if k != "reliability"},
        "baseline": result.metrics["baseline"],
        "run_id": result.run_id,
    }


@flow(name="mlpipe-train")
def train_flow(job: str = "churn", as_of: date | None = None) -> dict:
    """Train the job as of `as_of` (default today); promote the new version if the spec's rule is met."""
    return train_task(job, as_of or date.today())
