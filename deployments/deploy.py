"""Schedules as code: monthly training and daily scoring of each job, served from this process.

    python deployments/deploy.py --job churn     # registers the deployments and serves them

Without PREFECT_API_URL they go to mlpipe's managed local Prefect server (`mlpipe server up` starts it;
the UI is at the address `mlpipe server status` prints); with it, to that server or Prefect Cloud.
Ctrl-C or SIGTERM stops serving (runs in progress are cancelled and marked so); the server stays up.
Trigger one by hand with `prefect deployment run 'mlpipe-score/churn-daily'`. Each run reads the
serving process's MLPIPE_* settings when it starts: MLPIPE_DASK_ADDRESS sends its chunks to that Dask
cluster, otherwise MLPIPE_WORKERS threads score them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.runner import Runner
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.score import score_flow
from flows.train import train_flow
from mlpipe import prefect_api

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
            tags=["mlpipe", job, "train"],
            entrypoint_type=BY_MODULE,
        ),
        score_flow.to_deployment(
            name=f"{job}-daily",
            parameters={"job": job, "monitor": True},
            schedule=Cron(SCORE_CRON, timezone="UTC"),
            description=f"Score the whole {job} population daily, publish it, then monitor drift and "
            "performance (a crossed fail threshold fails the run).",
            tags=["mlpipe", job, "score"],
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


STOP_TIMEOUT_S = 60


def serve_until_stopped(deployments: list[RunnerDeployment], api_url: str) -> None:
    """Serve the deployments until SIGINT or SIGTERM, then stop the runner and return.

    Prefect's `serve` stops from inside its SIGTERM handler by waiting on the event loop that the
    handler interrupted (it hung at "Pausing all deployments"), and a process started with `&` from a
    script inherits an ignored SIGINT. Here the runner's loop runs in a thread of its own, and the main
    thread takes both signals and asks that loop to stop."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(f"serving {names} on {api_url}; Ctrl-C stops", flush=True)  # from here a signal stops cleanly
    runner = Runner(name="mlpipe", pause_on_shutdown=False)
    loop = asyncio.new_event_loop()

    async def start() -> None:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):  # settings are per thread
            for deployment in deployments:
                await runner.aadd_deployment(deployment)
            if not stop.is_set():
                await runner.start()

    serving = threading.Thread(target=loop.run_until_complete, args=(start(),), name="mlpipe-serve")
    serving.start()
    while serving.is_alive() and not stop.wait(0.5):
        pass
    if serving.is_alive():
        print("stopping: no new runs are started; runs in progress are cancelled", flush=True)
        # A signal during registration (slow under load) lands before the runner has started: wait for
        # it to start, or for the thread to see the stop and end, before asking it to stop.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while serving.is_alive() and not runner.started and time.monotonic() < deadline:
            serving.join(timeout=0.1)
        if runner.started:
            asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=STOP_TIMEOUT_S)
        serving.join(timeout=STOP_TIMEOUT_S)
    print("stopped serving", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job", action="append", help="job to schedule (repeatable; default churn)")
    args = parser.parse_args()
    api_url = prefect_api.api_url()
    os.environ["PREFECT_API_URL"] = api_url  # the runs this process starts report to the same API
    deployments = [d for job in (args.job or ["churn"]) for d in build_deployments(job)]
    serve_until_stopped(deployments, api_url)


if __name__ == "__main__":
    main()
