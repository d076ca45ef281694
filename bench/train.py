"""Training benchmark: the churn job on about N labeled rows, with its search, against its time budget.

    python bench/train.py --labeled-rows 1000000      # default

Generates a demo world sized so that the stacked training set (several cutoffs) has about N labeled
rows, trains with the job's candidates, search and calibration, and prints the time of each stage
next to the spec's budget. The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set (its
demo schema is replaced), else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

# About 0.375 of the customers are active at a cutoff in the demo world, and the job stacks 6 cutoffs.
LABELED_ROWS_PER_ENTITY = 0.375 * 6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labeled-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from bench.common import scratch
    from mlpipe import train
    from mlpipe.db import connection
    from mlpipe.demo import world
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    home, url = scratch()
    settings = Settings(database_url=url, home=home)
    spec = load_job("churn", settings)
    entities = int(args.labeled_rows / LABELED_ROWS_PER_ENTITY)
    print(f"generating {entities:,} customers for ~{args.labeled_rows:,} labeled rows ...", flush=True)
    with connection(url) as conn:
        world.generate(conn, entities, seed=args.seed)

    started = time.perf_counter()
    with connection(url) as conn:
        result = train.train(conn, settings, spec, date.today())
    seconds = time.perf_counter() - started
    with connection(url) as conn:
        counts = conn.execute(
            "select row_counts from mlpipe.models where model_id = %s", [result.model.model_id]
        ).fetchone()[0]
    labeled = counts["train"] + counts["validation"] + counts["test"]
    budget = spec.training.time_budget_s
    print(
        f"\n{'candidate':<10}{'configs':>8}{'seconds':>10}{'validation ' + spec.model.metric:>22}{'test':>10}"
    )
    for name, c in result.metrics["candidates"].items():
        spent = sum(t["seconds"] for t in c["search"])
        print(
            f"{name:<10}{len(c['search']):>8}{spent:>10.1f}{c['validation'][spec.model.metric]:>22.4f}"
            f"{c['test'][spec.model.metric]:>10.4f}"
        )
    print(
        f"\n{labeled:,} labeled rows; trained {result.model.model_version} ({result.model.algorithm}, "
        f"calibration {result.metrics['calibration']['chosen']}) in {seconds:.1f}s; budget {budget:.0f}s"
    )
    print(
        json.dumps(
            {
                "labeled_rows": labeled,
                "entities": entities,
                "train_s": round(seconds, 1),
                "budget_s": budget,
                "within_budget": seconds <= budget,
                "chosen": result.metrics["chosen"],
                "test_" + spec.model.metric: round(result.metrics["test"][spec.model.metric], 4),
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
