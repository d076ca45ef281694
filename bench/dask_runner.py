"""Dask benchmark: one day of the demo job scored by chunk tasks on a local Dask cluster (a scheduler and
two single-thread workers, separate processes on loopback) against the default thread runner.

    python bench/dask_runner.py                       # 1M customers (the default)
    python bench/dask_runner.py --entities 100000 --rounds 1

The churn model trains on a small world (--train-entities), then the demo world is generated again with
N customers and today is scored in rounds, thread runner and Dask in turn (ABBA order, so that a
machine getting busier favours neither), each in a fresh process against one managed Prefect server
that the Dask workers report to as well. Scoring time is lock to publish, from mlpipe.runs. After each
run the bench keeps a copy of the published day and counts the entities whose row (every column but
run_id) differs from the first run's: the target is none, and Dask >= 0.8x the thread runner's rows/s.
(Named dask_runner.py: a bench/dask.py run as a script would shadow the dask package.)
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set (its demo schema is replaced), else a
temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(day: date) -> dict:
    """Scores `day` once in this process, with the task runner its environment selects."""
    from prefect import flow

    from flows.score import score_flow

    flow(name="bench-warm-up")(lambda: None)()
    started = time.perf_counter()
    result = score_flow(job="churn", as_of=day)
    return {
        "rows": result["rows_scored"],
        "seconds": result["timings"]["total_s"],
        "wall_s": time.perf_counter() - started,
        "chunks": result["chunks"],
    }


def keep(url: str, day: date, name: str) -> None:
    """A copy of the day's published rows, to compare runs after the next one replaced the day."""
    from psycopg import sql

    from mlpipe.db import connection

    with connection(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create table {} as select * from {} where as_of = %s").format(
                sql.Identifier("mlpipe_data", name), sql.Identifier("predictions", "churn_history")
            ),
            [day],
        )


def differences(url: str, name: str, reference: str) -> int:
    """Entities whose published row (every column but run_id) differs between two kept runs, or that
    only one of them has."""
    from psycopg import sql

    from mlpipe.db import connection

    with connection(url) as conn:
        return conn.execute(
            sql.SQL(
                "select count(*) from {} as a full join {} as b using (entity_id)"
                " where (a.score, a.decision, a.percentile, a.model_version, a.as_of, a.reasons)"
                " is distinct from (b.score, b.decision, b.percentile, b.model_version, b.as_of, b.reasons)"
            ).format(sql.Identifier("mlpipe_data", name), sql.Identifier("mlpipe_data", reference))
        ).fetchone()[0]


@contextmanager
def dask_cluster(env: dict, folder: Path):
    """A scheduler and two single-thread workers on loopback; yields the scheduler's address."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    with socket.socket() as probe:  # a free port on loopback for the scheduler
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    port = address.rsplit(":", 1)[1]
    common = {
        "env": env,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
    }
    processes = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"], **common
        )
    ]
    processes += [
        subprocess.Popen(
            [
                dask,
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--local-directory",
                str(folder / f"worker{i}"),
            ],
            **common,
        )
        for i in range(2)
    ]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--train-entities", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs per runner (ABBA order)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.as_of)))
        return

    from bench.backfill import prepare
    from bench.common import run_json, scratch, worker_env
    from mlpipe.prefect_api import ensure_server, stop_server
    from mlpipe.settings import Settings

    home, url = scratch()
    settings = Settings(database_url=url, home=home)
    figures = prepare(url, settings, args.entities, args.train_entities, args.seed, args.as_of)
    server = ensure_server(settings)
    env = {
        **worker_env(url, home),
        "PREFECT_API_URL": server.url,
        "DASK_TEMPORARY_DIRECTORY": str(home / "dask"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    runs: dict[str, list[dict]] = {"warm-up": [], "threads": [], "dask": []}
    try:
        with dask_cluster(env, home / "dask") as address:
            on_dask = {**env, "MLPIPE_DASK_ADDRESS": address}
            envs = {"threads": env, "dask": on_dask, "warm-up": on_dask}
            # The first run warms the workers (imports, the verified model) and the database's cache;
            # a cluster serving daily runs stays up, so it is not counted.
            order = ["warm-up", *(["threads", "dask", "dask", "threads"] * args.rounds)[: 2 * args.rounds]]
            for runner in order:
                result = run_json(
                    __file__, ["--worker", "--as-of", args.as_of.isoformat()], envs[runner], runner
                )
                name = f"bench_run_{sum(map(len, runs.values()))}"
                keep(url, args.as_of, name)
                result["differing_rows"] = differences(url, name, "bench_run_0")  # vs the warm-up run
                runs[runner].append(result)
                print(
                    f"{runner:<8}{result['rows']:>12,} rows {result['chunks']:>3} chunks "
                    f"{result['seconds']:>8.2f}s scoring {result['wall_s']:>8.2f}s wall, "
                    f"{result['differing_rows']} rows differ from the warm-up run's",
                    flush=True,
                )
    finally:
        stop_server(settings)

    def rate(runner: str) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in runs[runner])

    differing = sum(r["differing_rows"] for rs in runs.values() for r in rs)
    ratio = rate("dask") / rate("threads")
    print(
        f"\nthreads {rate('threads'):,.0f} rows/s, dask {rate('dask'):,.0f} rows/s: "
        f"dask {ratio:.2f}x threads "
        f"(target >= 0.8); published rows {'identical' if differing == 0 else 'DIFFER'}"
    )
    print(
        json.dumps(
            {
                "entities": args.entities,
                "rows_scored": runs["threads"][0]["rows"],
                "threads_rows_per_s": round(rate("threads")),
                "dask_rows_per_s": round(rate("dask")),
                "dask_vs_threads": round(ratio, 3),
                "identical_rows": differing == 0,
                "differing_rows": [r["differing_rows"] for r in runs["threads"] + runs["dask"]],
                "threads_seconds": [r["seconds"] for r in runs["threads"]],
                "dask_seconds": [r["seconds"] for r in runs["dask"]],
                **figures,
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
