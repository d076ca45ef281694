"""Backfill benchmark: N days scored by the backfill flow against one day by the same flow, one world.

    python bench/backfill.py --days 30                        # 1M customers (the default)
    python bench/backfill.py --days 5 --entities 100000

The churn model trains on a small world (--train-entities), then the demo world is generated again with
N customers (same end day) and scored. In one fresh worker process, after Prefect's local API is up:
  one day:  the backfill flow over the newest day alone (after an uncounted first run of it, which
            pays the process's first use: imports, loading the model, the database's cache), timed
            before and after the backfill; one_day_s is the mean of the two;
  backfill: the backfill flow over the --days days ending on that day, oldest first.
The target is backfill_s <= (days + 0.5) * one_day_s: nothing per day that is not the day's own
work. Per day it prints the scoring time mlpipe.runs records (lock to publish) and the rest of the
day's wall time (the subflow around it: Prefect's run, the report, metrics).
The last line is one JSON object with days, one_day_s, backfill_s, ratio and per-day figures. Uses
MLPIPE_DATABASE_URL if set (its demo schema is replaced), else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path


def worker(end: date, days: int) -> dict:
    """Times, in this process, the backfill of the newest day alone and then of all the days."""
    from prefect import flow

    from flows.backfill import backfill_flow

    flow(name="bench-warm-up")(lambda: None)()  # Prefect's local API starts before the clock does

    def timed(start: date) -> tuple[float, list[dict]]:
        started = time.perf_counter()
        results = backfill_flow(job="churn", start=start, end=end)
        return time.perf_counter() - started, results

    timed(end)  # first use in the process (imports, the verified model, the database's cache): not counted
    before_s, one = timed(end)
    backfill_s, results = timed(end - timedelta(days=days - 1))
    after_s, _ = timed(end)  # the day again after the backfill: a machine that got busier shows here
    return {
        "one_day_s": (before_s + after_s) / 2,
        "one_day_runs_s": [before_s, after_s],
        "one_day_rows": one[0]["rows_scored"],
        "one_day_scoring_s": one[0]["timings"]["total_s"],
        "backfill_s": backfill_s,
        "per_day": [
            {"as_of": r["as_of"], "rows": r["rows_scored"], "scoring_s": r["timings"]["total_s"]}
            for r in results
        ],
    }


def prepare(url: str, settings, entities: int, train_entities: int, seed: int, end: date) -> dict:
    """A trained churn champion (on a small world) and the world of `entities` customers to score."""
    from mlpipe import train
    from mlpipe.db import connection
    from mlpipe.demo import world
    from mlpipe.spec import load_job

    figures = {}
    started = time.perf_counter()
    with connection(url) as conn:
        world.generate(conn, train_entities, seed=seed, end=end)
        trained = train.train(conn, settings, load_job("churn", settings), end)
    figures["train_s"] = round(time.perf_counter() - started, 1)
    print(f"trained {trained.model.model_version} in {figures['train_s']}s", flush=True)
    started = time.perf_counter()
    with connection(url) as conn:
        summary = world.generate(conn, entities, seed=seed, end=end)
    figures["generate_s"] = round(time.perf_counter() - started, 1)
    print(
        f"generated {summary.entities:,} customers, {summary.events:,} events in {figures['generate_s']}s",
        flush=True,
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--train-entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--end", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.end, args.days)))
        return

    from bench.common import run_json, scratch, worker_env
    from mlpipe.settings import Settings

    home, url = scratch()
    settings = Settings(database_url=url, home=home)
    figures = prepare(url, settings, args.entities, args.train_entities, args.seed, args.end)
    out = run_json(
        __file__,
        ["--worker", "--days", str(args.days), "--end", args.end.isoformat()],
        worker_env(url, home),
        "backfill worker",
    )
    per_day = out.pop("per_day")
    overhead = (out["backfill_s"] - sum(d["scoring_s"] for d in per_day)) / len(per_day)
    print(f"\n{'as_of':<12}{'rows':>12}{'scoring s':>11}")
    for d in per_day:
        print(f"{d['as_of']:<12}{d['rows']:>12,}{d['scoring_s']:>11.2f}")
    ratio = out["backfill_s"] / out["one_day_s"]
    print(
        f"\none day: {out['one_day_s']:.2f}s wall ({out['one_day_scoring_s']:.2f}s scoring, "
        f"{out['one_day_rows']:,} rows); {args.days} days: {out['backfill_s']:.2f}s wall = "
        f"{ratio:.2f}x one day "
        f"(target <= {args.days + 0.5}x); per day outside scoring: {overhead:.2f}s "
        f"(one day alone: {out['one_day_runs_s'][0] - out['one_day_scoring_s']:.2f}s)"
    )
    print(
        json.dumps(
            {
                "days": args.days,
                "entities": args.entities,
                "one_day_s": round(out["one_day_s"], 3),
                "one_day_scoring_s": round(out["one_day_scoring_s"], 3),
                "one_day_runs_s": [round(x, 3) for x in out["one_day_runs_s"]],
                "backfill_s": round(out["backfill_s"], 3),
                "ratio": round(ratio, 3),
                "target_ratio": args.days + 0.5,
                "median_day_scoring_s": round(statistics.median(d["scoring_s"] for d in per_day), 3),
                "per_day_outside_scoring_s": round(overhead, 3),
                "rows_per_day": [d["rows"] for d in per_day],
                **figures,
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
