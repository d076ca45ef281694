"""End-to-end scoring benchmark: mlpipe against the naive path, same data, same model, one run.

    python bench/score.py --entities 1000000          # default
    python bench/score.py --entities 100000 --skip-naive

Generates the demo world (N customers), trains the churn job, then scores today's population
in a fresh process per path so each peak RSS is that path's own:
  mlpipe: the Prefect scoring flow (chunked COPY out, vectorized predict, binary COPY in, publish);
  naive:  pandas.read_sql -> predict -> DataFrame.to_sql.
Throughput counts scored rows over the scoring time (mlpipe: lock to publish, from mlpipe.runs).
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set (its demo schema is replaced),
else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path


def _peak_rss_mb() -> float:
    # VmHWM is this process image's own high-water mark; ru_maxrss would carry the parent's
    # RSS over fork and exec, hiding the difference between the two paths.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_mlpipe(day: date) -> dict:
    from flows.score import with_workers
    from mlpipe.settings import Settings

    started = time.perf_counter()
    result = with_workers(Settings())(job="churn", as_of=day)
    wall = time.perf_counter() - started
    seconds = result["timings"]["total_s"]
    return {"rows": result["rows_scored"], "seconds": seconds, "wall_s": wall, "peak_rss_mb": _peak_rss_mb()}


def worker_naive(day: date) -> dict:
    import numpy as np
    import pandas as pd
    import sqlalchemy

    from mlpipe import registry
    from mlpipe.db import connection, database_url
    from mlpipe.extract import features_query
    from mlpipe.features import to_matrix
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    settings = Settings()
    spec = load_job("churn", settings)
    url = database_url(settings)
    with connection(url) as conn:
        model = registry.champion(conn, "churn")
        query = features_query(spec).as_string(conn)
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    started = time.perf_counter()
    frame = pd.read_sql(query, engine, params={"as_of": day})
    scores = model.load().predict(to_matrix(frame, spec))
    out = pd.DataFrame(
        {
            "entity_id": frame[spec.entity.key],
            "score": scores,
            "decision": scores >= spec.outputs.threshold,
            "percentile": 100.0 * np.searchsorted(model.reference["scores"], scores) / 1001,
            "model_version": model.model_version,
            "as_of": day,
        }
    )
    out.to_sql("naive_predictions", engine, schema="mlpipe_data", if_exists="replace", index=False)
    seconds = time.perf_counter() - started
    return {"rows": len(out), "seconds": seconds, "wall_s": seconds, "peak_rss_mb": _peak_rss_mb()}


def run_worker(path: str, day: date, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", path, "--as-of", day.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{path} path failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-naive", action="store_true", help="leave the naive path out")
    parser.add_argument("--chunk-rows", type=int, default=None, help="MLPIPE_CHUNK_ROWS for the mlpipe path")
    parser.add_argument("--worker", choices=["mlpipe", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker_mlpipe(args.as_of) if args.worker == "mlpipe" else worker_naive(args.as_of)
        print(json.dumps(result))
        return

    from bench.common import scratch
    from mlpipe import train
    from mlpipe.db import connection, migrate
    from mlpipe.demo import world
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    home, url = scratch()
    env = {
        **os.environ,
        "MLPIPE_DATABASE_URL": url,
        "MLPIPE_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    if args.chunk_rows:
        env["MLPIPE_CHUNK_ROWS"] = str(args.chunk_rows)
    settings = Settings(database_url=url, home=home)
    migrate(url)
    print(f"generating {args.entities:,} customers ...", flush=True)
    started = time.perf_counter()
    with connection(url) as conn:
        summary = world.generate(conn, args.entities, seed=args.seed)
    generate_s = time.perf_counter() - started
    print(f"  {generate_s:.1f}s: {summary.events:,} events, {summary.payments:,} payments", flush=True)
    started = time.perf_counter()
    with connection(url) as conn:
        trained = train.train(conn, settings, load_job("churn", settings), date.today())
    train_s = time.perf_counter() - started
    print(f"trained {trained.model.model_version} ({trained.model.algorithm}) in {train_s:.1f}s", flush=True)

    results = {"mlpipe": run_worker("mlpipe", date.today(), env)}
    if not args.skip_naive:
        results["naive"] = run_worker("naive", date.today(), env)

    print(f"\n{'path':<8}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(f"{name:<8}{r['rows']:>12,}{r['seconds']:>10.2f}{rate:>12,.0f}{r['peak_rss_mb']:>14,.0f}")
    summary_json = {
        "entities": args.entities,
        "rows_scored": results["mlpipe"]["rows"],
        "generate_s": round(generate_s, 2),
        "train_s": round(train_s, 2),
        "mlpipe_seconds": round(results["mlpipe"]["seconds"], 3),
        "mlpipe_rows_per_s": round(results["mlpipe"]["rows"] / results["mlpipe"]["seconds"]),
        "mlpipe_peak_rss_mb": round(results["mlpipe"]["peak_rss_mb"]),
    }
    if "naive" in results:
        naive = results["naive"]
        summary_json.update(
            naive_seconds=round(naive["seconds"], 3),
            naive_rows_per_s=round(naive["rows"] / naive["seconds"]),
            naive_peak_rss_mb=round(naive["peak_rss_mb"]),
            speedup=round(
                naive["seconds"] / results["mlpipe"]["seconds"] * results["mlpipe"]["rows"] / naive["rows"], 2
            ),
        )
    print(json.dumps(summary_json))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
