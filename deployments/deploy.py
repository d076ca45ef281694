"""Schedules as code: monthly training and daily scoring of each job, served from this process.

    prefect server start --background            # or Prefect Cloud
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    python deployments/deploy.py --job churn     # registers the deployments and serves them

Trigger one by hand with `prefect deployment run 'mlpipe-score/churn-daily'`. Each run reads the
serving process's MLPIPE_* settings when it starts: MLPIPE_DASK_ADDRESS sends its chunks to that Dask
cluster, otherwise MLPIPE_WORKERS threads score them.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.score import score_flow
from flows.train import train_flow

TRAIN_CRON = "0 3 1 * *"  # 03:00 UTC on the 1st of each month
SCORE_CRON = "0 5 * * *"  # 05:00 UTC every day, after the nightly loads
TOPUP_CRON = "30 * * * *"  # every hour at :30 UTC: the entities that appeared since the day's run


# Runs load the flows by module (`flows.score.score_flow`, installed with mlpipe), not by file: a flow
# loaded from a file lives in a module named after the file, and its tasks could not be unpickled on
# the Dask workers that MLPIPE_DASK_ADDRESS sends them to.
BY_MODULE = EntrypointType.MODULE_PATH


def build_deployments(job: str = "churn") -> list[RunnerDeployment]:
    """The deployments of one job: `<job>-monthly` training, `<job>-daily` scoring and the
    `<job>-topup` of new entities every hour."""
    return [
        train_flow.to_deployment(
            name=f"{job}-monthly",
            parameters={"job": job},
            schedule=Cron(TRAIN_CRON, timezone="UTC"),
            description=f"Train {job} on the 1st of each month; promote by the job's rule.",
            tags=["mlpipe", job],
            entrypoint_type=BY_MODULE,
        ),
        score_flow.to_deployment(
            name=f"{job}-daily",
            parameters={"job": job, "monitor": True},
            schedule=Cron(SCORE_CRON, timezone="UTC"),
            description=f"Score the whole {job} population daily, publish it, then monitor drift and "
            "performance (a crossed fail threshold fails the run).",
            tags=["mlpipe", job],
            entrypoint_type=BY_MODULE,
        ),
        score_flow.to_deployment(
            name=f"{job}-topup",
            parameters={"job": job, "new_only": True},
            schedule=Cron(TOPUP_CRON, timezone="UTC"),
            description=f"Every hour, score the {job} entities the live day lacks (new since its run) "
            "and insert them into that day.",
            tags=["mlpipe", job],
            entrypoint_type=BY_MODULE,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", action="append", help="job to schedule (repeatable; default churn)")
    args = parser.parse_args()
    deployments = [d for job in (args.job or ["churn"]) for d in build_deployments(job)]
    serve(*deployments)


if __name__ == "__main__":
    main()
