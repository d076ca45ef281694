"""Top-up benchmark: on an N-entity published day of the `wide` job (30 numeric features, XGBoost
300x6), add M new entities to its source and top the day up; the time, and the longest lookup a reader
saw through predictions.wide meanwhile (a reader thread looks keys up without pause).

    python bench/topup.py --entities 1000000 --new 10000

The day and the top-up run through the library (ScoringRun / TopUp, chunk tasks on a thread pool as
the flow's default runner does), without Prefect's per-process API start. The last line is JSON with
topup_s and topup_max_stall_ms. Uses MLPIPE_DATABASE_URL if set, else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np


def run(cls, url: str, settings, spec, *args) -> dict:
    """A scoring run or a top-up, its chunks on settings.workers threads; its summary."""
    from mlpipe.chunks import score_chunk

    with cls.begin(url, settings, spec, *args) as scoring:
        ctx = scoring.context
        with ThreadPoolExecutor(settings.workers) as pool:
            results = list(pool.map(lambda chunk: score_chunk(ctx, chunk), scoring.chunks))
        return scoring.finish(results).as_dict()


def read_without_pause(url: str, job: str, high: int, stop, slowest, lookups) -> None:
    """In a process of its own (no share of the top-up's GIL): look keys up through the view, keep
    the slowest lookup in `slowest` (ms), reset when it is set to -1."""
    from psycopg import sql

    from mlpipe.db import connect

    rng = np.random.default_rng(2)
    query = sql.SQL("select score from {} where entity_id = %s").format(sql.Identifier("predictions", job))
    with connect(url, autocommit=True) as conn, conn.cursor() as cur:
        while not stop.is_set():
            started = time.perf_counter()
            cur.execute(query, [int(rng.integers(1, high))], prepare=True)
            cur.fetchone()
            slowest.value = max(slowest.value, (time.perf_counter() - started) * 1000)
            lookups.value += 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from bench.common import scratch
    from bench.score import prepare
    from mlpipe.db import connection
    from mlpipe.demo import wide
    from mlpipe.score import ScoringRun
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job
    from mlpipe.topup import TopUp

    home, url = scratch()
    settings = Settings(database_url=url, home=home)
    job, _, _ = prepare("wide", url, settings, args.seed)
    spec = load_job(job, settings)
    with connection(url) as conn:
        wide.generate(conn, args.entities, seed=args.seed + 1)
    started = time.perf_counter()
    day = run(ScoringRun, url, settings, spec, date.today(), None)
    print(f"scored and published {day['rows_scored']:,} rows in {time.perf_counter() - started:.1f}s")
    with connection(url, autocommit=True) as conn:
        first = conn.execute("select max(entity_id) + 1 from demo.wide").fetchone()[0]
        conn.execute(
            "insert into demo.wide select entity_id + %s, f01, f02, f03, f04, f05, f06, f07, f08, f09, f10,"
            " f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29,"
            " f30, label from demo.wide order by entity_id limit %s",
            [first, args.new],
        )
        conn.execute("analyze demo.wide")

    spawn = multiprocessing.get_context("spawn")
    stop, slowest, lookups = spawn.Event(), spawn.Value("d", 0.0), spawn.Value("q", 0)
    reader = spawn.Process(target=read_without_pause, args=(url, spec.name, first, stop, slowest, lookups))
    reader.start()
    time.sleep(3.0)  # the process starts and imports
    slowest.value = 0.0
    time.sleep(1.0)  # the same reader with nothing else running: the machine's own noise
    idle_ms, slowest.value, before = slowest.value, 0.0, lookups.value
    started = time.perf_counter()
    topup = run(TopUp, url, settings, spec)
    topup_s = time.perf_counter() - started
    time.sleep(0.2)
    stop.set()
    reader.join()
    stall_ms, during = slowest.value, lookups.value - before
    timings = topup["timings"]
    print(
        f"top-up of {timings['rows_inserted']:,} new entities into a {day['rows_scored']:,}-entity day: "
        f"{topup_s:.2f}s (plan {timings.get('plan_s')}s, gate {timings.get('gate_s')}s, "
        f"insert {timings.get('insert_s')}s); {during:,} lookups meanwhile (another process), the slowest "
        f"{stall_ms:.1f} ms (idle, the slowest of 1 s: {idle_ms:.1f} ms)"
    )
    print(
        json.dumps(
            {
                "entities": args.entities,
                "new": args.new,
                "rows_inserted": timings["rows_inserted"],
                "topup_s": round(topup_s, 3),
                "topup_plan_s": timings.get("plan_s"),
                "topup_insert_s": timings.get("insert_s"),
                "topup_max_stall_ms": round(stall_ms, 2),
                "idle_max_lookup_ms": round(idle_ms, 2),
                "lookups_during_topup": during,
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
