"""CLI benchmark: how long the quick commands take in a fresh process, and what `train`, `score` and
`backfill` add to the run's own time, with the managed Prefect server warm and cold.

    python bench/cli.py --entities 3000 --repeat 5

Quick commands (`--help`, `--version`, `db url`, `db status`, `lookup`, `runs`, `models`, `jobs`) are each
run `--repeat` times as an operator runs them (`python -m mlpipe.cli ...`, a new process each time) and
the median wall time is reported; the target is 1 s. For `train`, `score` and `backfill` (2 days) the
overhead is the command's wall time less the run's own time as mlpipe.runs records it (timings.total_s,
summed over a backfill's days); the median of `--flow-repeat` runs is reported.

Warm and cold are reported apart. Warm: the managed Prefect server already runs, the normal case (the
first command of the day starts it and every later one reuses it); the 3 s target applies to warm.
Cold: the first `train` after `mlpipe server down`, which also starts the server (its first start
migrates its database). With PREFECT_API_URL given that server is used and there is no cold case.
Uses an embedded PostgreSQL in a scratch MLPIPE_HOME (MLPIPE_DATABASE_URL if set) and stops the
managed server it started. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUICK_S = 1.0
FLOW_OVERHEAD_S = 3.0


def cli(env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one `mlpipe` command in a new process, and its outcome (a failure stops the bench)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mlpipe.cli", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"mlpipe {' '.join(args)} failed: {out.stderr.strip()}")
    return seconds, out


def quick_commands(env: dict, repeat: int, entity: str) -> dict[str, float]:
    """Median wall seconds of each quick command over `repeat` fresh processes."""
    commands = {
        "--help": ["--help"],
        "--version": ["--version"],
        "db url": ["db", "url"],
        "db status": ["db", "status"],
        "lookup": ["lookup", entity],
        "runs": ["runs"],
        "models": ["models", "list"],
        "jobs": ["jobs"],
    }
    return {
        name: round(statistics.median(cli(env, *args)[0] for _ in range(repeat)), 3)
        for name, args in commands.items()
    }


def run_seconds(url: str, kind: str, after: int) -> tuple[float, int]:
    """Sum of timings.total_s of the runs of that kind after run `after`, and the newest run id."""
    from mlpipe.db import connection

    with connection(url) as conn:
        row = conn.execute(
            """select coalesce(sum((timings ->> 'total_s')::float8), 0), coalesce(max(run_id), %s)
               from mlpipe.runs where kind = %s and run_id > %s""",
            [after, kind, after],
        ).fetchone()
    return float(row[0]), int(row[1])


class FlowCommands:
    """Runs flow commands and reads their runs' own time from mlpipe.runs."""

    def __init__(self, env: dict, url: str) -> None:
        self.env, self.url, self.last_run = env, url, 0

    def measure(self, kind: str, *args: str) -> dict:
        """Wall time, the runs' own time and their difference for one command."""
        wall, _ = cli(self.env, *args)
        own, newest = run_seconds(self.url, kind, self.last_run)
        self.last_run = max(self.last_run, newest)
        return {"wall_s": round(wall, 2), "run_s": round(own, 2), "overhead_s": round(wall - own, 2)}

    def median(self, repeat: int, kind: str, *args: str) -> dict:
        """The run of median overhead among `repeat` runs of the command."""
        runs = sorted((self.measure(kind, *args) for _ in range(repeat)), key=lambda f: f["overhead_s"])
        return runs[len(runs) // 2]


def flow_overheads(env: dict, url: str, repeat: int, managed: bool) -> tuple[dict | None, dict[str, dict]]:
    """(cold train, or None with a given PREFECT_API_URL; warm train, score and a 2-day backfill)."""
    today = date.today()
    commands = FlowCommands(env, url)
    cold = None
    if managed:
        cli(env, "server", "down")
        cold = {"train": commands.measure("train", "train")}
    warm = {
        "train": commands.median(repeat, "train", "train"),
        # The version trained first, champion or not (a small world may not beat the baseline).
        "score": commands.median(repeat, "score", "score", "--model", "churn-v1"),
        "backfill": commands.median(
            repeat,
            "score",
            "backfill",
            "--model",
            "churn-v1",
            "--start",
            str(today - timedelta(days=2)),
            "--end",
            str(today - timedelta(days=1)),
        ),
    }
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each quick command.")
    parser.add_argument("--flow-repeat", type=int, default=1, help="Warm runs of each flow command.")
    args = parser.parse_args()

    from bench.common import scratch
    from mlpipe.db import connection
    from mlpipe.demo import world

    load_before = os.getloadavg()[0]  # a shared machine: the figures scale with its load
    home, url = scratch()
    env = {**os.environ, "MLPIPE_HOME": str(home), "COLUMNS": "200"}
    if os.environ.get("MLPIPE_DATABASE_URL"):
        env["MLPIPE_DATABASE_URL"] = url
    with connection(url) as conn:
        world.generate(conn, args.entities, seed=42, end=date.today())
        conn.commit()
    managed = not os.environ.get("PREFECT_API_URL")
    try:
        cold, flows = flow_overheads(env, url, args.flow_repeat, managed)
        with connection(url) as conn:
            entity = str(conn.execute("select entity_id from predictions.churn limit 1").fetchone()[0])
        quick = quick_commands(env, args.repeat, entity)
    finally:
        if managed:
            cli(env, "server", "down")

    print(f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'command':<12} {'median s':>9}   (fresh process, {args.repeat} runs, target {QUICK_S:g} s)")
    for name, seconds in quick.items():
        print(f"{name:<12} {seconds:>9.3f}")
    header = f"{'command':<16} {'wall s':>8} {'run s':>8} {'overhead s':>11}"
    print(f"\n{header}   (target {FLOW_OVERHEAD_S:g} s, warm)")
    for name, f in flows.items():
        print(f"{name + ' (warm)':<16} {f['wall_s']:>8.2f} {f['run_s']:>8.2f} {f['overhead_s']:>11.2f}")
    for name, f in (cold or {}).items():
        print(f"{name + ' (cold)':<16} {f['wall_s']:>8.2f} {f['run_s']:>8.2f} {f['overhead_s']:>11.2f}")
    print(
        json.dumps(
            {
                "bench": "cli",
                "entities": args.entities,
                "repeat": args.repeat,
                "quick_median_s": quick,
                "quick_max_s": max(quick.values()),
                "quick_ok": max(quick.values()) <= QUICK_S,
                "flow_repeat": args.flow_repeat,
                "flows": flows,
                "flow_overhead_s": {name: f["overhead_s"] for name, f in flows.items()},
                "flow_overhead_max_s": max(f["overhead_s"] for f in flows.values()),
                "flow_ok": max(f["overhead_s"] for f in flows.values()) <= FLOW_OVERHEAD_S,
                "cold": cold,
                "prefect_api_url_given": bool(os.environ.get("PREFECT_API_URL")),
                "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            }
        )
    )


if __name__ == "__main__":
    main()
