"""End-to-end scoring benchmark: mlpipe against the naive path, same data, same model, one run.

    python bench/score.py --entities 1000000                       # the demo churn job (default)
    python bench/score.py --shape wide --entities 1000000 10000000  # 30 numeric features, XGBoost 300x6
    python bench/score.py --entities 100000 --skip-naive

demo: generates the demo world (N customers), trains the churn job, scores today's population.
wide: trains the `wide` job (XGBoost, 300 trees of depth 6) on 200k rows, then for each N fills
      demo.wide with N rows of 30 numeric features and scores them.
Each path runs in a fresh process so each peak RSS is that path's own:
  mlpipe: the Prefect scoring flow (chunked COPY out, checks, vectorized predict, binary COPY in, publish);
  naive:  pandas.read_sql -> predict -> DataFrame.to_sql (only at sizes up to --naive-max).
Throughput counts scored rows over the scoring time (mlpipe: lock to publish, from mlpipe.runs).
The last line is one JSON object (top-level keys for the first size; "runs" for every size). Uses
MLPIPE_DATABASE_URL if set (its demo schema is replaced), else a temporary embedded PostgreSQL.
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


def worker_mlpipe(day: date, job: str) -> dict:
    from flows.score import with_workers
    from mlpipe.settings import Settings

    started = time.perf_counter()
    result = with_workers(Settings())(job=job, as_of=day)
    wall = time.perf_counter() - started
    seconds = result["timings"]["total_s"]
    return {"rows": result["rows_scored"], "seconds": seconds, "wall_s": wall, "peak_rss_mb": _peak_rss_mb()}


def worker_naive(day: date, job: str) -> dict:
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
    spec = load_job(job, settings)
    url = database_url(settings)
    with connection(url) as conn:
        model = registry.champion(conn, job)
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


def run_worker(path: str, day: date, job: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", path, "--as-of", day.isoformat(), "--job", job],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{path} path failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(shape: str, url: str, settings, seed: int) -> tuple[str, float, float]:
    """Data and a trained model for the shape; returns (job, generate seconds, train seconds)."""
    from mlpipe import train
    from mlpipe.db import connection
    from mlpipe.demo import wide
    from mlpipe.spec import load_job

    job = "churn" if shape == "demo" else "wide"
    if shape == "wide":
        started = time.perf_counter()
        with connection(url) as conn:
            wide.generate(conn, 200_000, seed=seed)
        generated = time.perf_counter() - started
    else:
        generated = 0.0
    started = time.perf_counter()
    with connection(url) as conn:
        trained = train.train(conn, settings, load_job(job, settings), date.today())
    print(
        f"trained {trained.model.model_version} ({trained.model.algorithm}) in "
        f"{time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return job, generated, time.perf_counter() - started


def fill(shape: str, url: str, entities: int, seed: int) -> float:
    """The data to score: N demo customers, or N wide rows. Returns seconds."""
    from mlpipe.db import connection
    from mlpipe.demo import wide, world

    started = time.perf_counter()
    with connection(url) as conn:
        if shape == "demo":
            summary = world.generate(conn, entities, seed=seed)
            print(f"  {summary.events:,} events, {summary.payments:,} payments", flush=True)
        else:
            wide.generate(conn, entities, seed=seed + 1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["demo", "wide"], default="demo")
    parser.add_argument("--entities", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-naive", action="store_true", help="leave the naive path out")
    parser.add_argument(
        "--naive-max", type=int, default=1_000_000, help="largest size the naive path runs at"
    )
    parser.add_argument("--chunk-rows", type=int, default=None, help="MLPIPE_CHUNK_ROWS for the mlpipe path")
    parser.add_argument("--worker", choices=["mlpipe", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--job", default="churn", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker = worker_mlpipe if args.worker == "mlpipe" else worker_naive
        print(json.dumps(worker(args.as_of, args.job)))
        return

    from bench.common import scratch
    from mlpipe.db import migrate
    from mlpipe.settings import Settings

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
    if args.shape == "demo":  # the demo model trains on the world it scores
        print(f"generating {args.entities[0]:,} customers ...", flush=True)
        generate_s = fill("demo", url, args.entities[0], args.seed)
    job, _, train_s = prepare(args.shape, url, settings, args.seed)

    runs = []
    for size in args.entities:
        if args.shape == "wide" or size != args.entities[0]:
            print(f"filling {size:,} entities ...", flush=True)
            generate_s = fill(args.shape, url, size, args.seed)
        results = {"mlpipe": run_worker("mlpipe", date.today(), job, env)}
        if not args.skip_naive and size <= args.naive_max:
            results["naive"] = run_worker("naive", date.today(), job, env)
        runs.append(summarize(size, results, generate_s, train_s))
        print(f"\n{'path':<8}{'entities':>12}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}")
        for name, r in results.items():
            rate = r["rows"] / r["seconds"]
            print(
                f"{name:<8}{size:>12,}{r['rows']:>12,}{r['seconds']:>10.2f}{rate:>12,.0f}"
                f"{r['peak_rss_mb']:>14,.0f}",
                flush=True,
            )
    print(json.dumps({**runs[0], "shape": args.shape, "runs": runs}))


def summarize(size: int, results: dict, generate_s: float, train_s: float) -> dict:
    mlpipe = results["mlpipe"]
    out = {
        "entities": size,
        "rows_scored": mlpipe["rows"],
        "generate_s": round(generate_s, 2),
        "train_s": round(train_s, 2),
        "mlpipe_seconds": round(mlpipe["seconds"], 3),
        "mlpipe_rows_per_s": round(mlpipe["rows"] / mlpipe["seconds"]),
        "mlpipe_peak_rss_mb": round(mlpipe["peak_rss_mb"]),
    }
    if "naive" in results:
        naive = results["naive"]
        out.update(
            naive_seconds=round(naive["seconds"], 3),
            naive_rows_per_s=round(naive["rows"] / naive["seconds"]),
            naive_peak_rss_mb=round(naive["peak_rss_mb"]),
            speedup=round((mlpipe["rows"] / mlpipe["seconds"]) / (naive["rows"] / naive["seconds"]), 2),
        )
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
