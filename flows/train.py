"""Monthly training flow: build the training set, fit and evaluate candidates, register, promote."""

from __future__ import annotations

from datetime import date

from prefect import flow, task

from mlpipe import flow_runs, train
from mlpipe.db import connection, database_url
from mlpipe.settings import Settings
from mlpipe.spec import load_job


@task(name="train-and-register")
def train_task(job: str, as_of: date) -> dict:
    """Train and register; the candidates table goes on the flow run."""
    settings = Settings()
    spec = load_job(job, settings)
    with connection(database_url(settings)) as conn:
        result = train.train(conn, settings, spec, as_of, flow_run_id=flow_runs.flow_run_id())
    brief = summary(result, spec.model.metric)
    flow_runs.candidates_artifact(job, brief)
    return brief


def summary(result: train.TrainResult, metric: str) -> dict:
    """What the flow returns and the CLI prints: every candidate, the baseline and the champion."""
    metrics = result.metrics

    def brief(values: dict | None) -> dict | None:
        return None if values is None else {k: v for k, v in values.items() if k != "reliability"}

    return {
        "model_version": result.model.model_version,
        "promoted": result.promoted,
        "decision": result.decision,
        "metric": metric,
        "test": brief(metrics["test"]),
        "baseline": metrics["baseline"],
        "champion": brief(metrics["champion"]),
        "chosen": metrics["chosen"],
        "calibration": metrics["calibration"]["chosen"],
        "candidates": {
            name: {
                "algorithm": c["algorithm"],
                "validation": c["validation"][metric],
                "test": brief(c["test"]),
                "behaviour_passed": c["behaviour"]["passed"],
                "configurations": len(c["search"]),
            }
            for name, c in metrics["candidates"].items()
        },
        "run_id": result.run_id,
    }


@flow(name="mlpipe-train", flow_run_name=flow_runs.train_run_name)
def train_flow(job: str = "churn", as_of: date | None = None) -> dict:
    """Train the job as of `as_of` (default today); promote the new version if the spec's rule is met."""
    flow_runs.tag_run("train", job)
    with flow_runs.run_logs("train", job):
        return train_task(job, as_of or date.today())
