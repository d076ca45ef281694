"""End-to-end scoring benchmark: mlpipe against the naive path, same data, same model, one run.

    python bench/score.py --entities 1000000                       # the demo churn job (default)
    python bench/score.py --shape wide --entities 1000000 10000000  # 30 numeric features, XGBoost 300x6
    python bench/score.py --shape wide mixed --entities 1000000     # both shapes, side by side
    python bench/score.py --entities 100000 --skip-naive
    python bench/score.py --shape wide mixed --skip-naive --also-chunk-rows 200000  # + mlpipe@200000

demo: generates the demo world (N customers), trains the churn job, scores today's population.
wide: trains the `wide` job (XGBoost, 300 trees of depth 6) on 200k rows, then for each N fills
      demo.wide with N rows of 30 numeric features and scores them.
mixed: the same for the `mixed` job (demo.mixed): a text key, 4 categorical inputs (one of ~1,000
      values; XGBoost's native categoricals, so 30 model inputs), 26 numeric inputs with NULLs in 6 of
      them (1-15%).
With several shapes, each size runs every shape in turn (the ratios compare shapes of one invocation).
Each path runs in a fresh process so each peak RSS is that path's own:
  mlpipe:          the Prefect scoring flow (chunked reads, checks, quarantine, vectorized predict,
                   binary COPY in, gates, index, publish), reasons off;
  mlpipe+reasons:  the same with outputs.reasons: 3 (top three reasons per row);
  script:          (wide, mixed) the hand-written reference: key ranges read with ADBC (binary COPY into
                   Arrow), encoded with Arrow compute, inplace_predict, binary COPY into a fresh
                   table, primary key, rename; three threads, no checks;
  naive:           pandas.read_sql -> predict -> DataFrame.to_sql (only at sizes up to --naive-max).
Then, on one chunk of rows: rows/s of the reasons (surrogate) against XGBoost's approximate
contributions and exact TreeSHAP.
Throughput counts scored rows over the scoring time (mlpipe: lock to publish, from mlpipe.runs, with
Prefect's local API started before).
The last line is one JSON object (top-level keys for the first size; "runs" for every size). Uses
MLPIPE_DATABASE_URL if set (its demo schema is replaced), else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import resource
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
    from prefect import flow

    from flows.score import score_flow

    # Prefect's local API starts with the first flow and keeps busy for seconds after; a deployment
    # talks to a server that is already up, so start it before the clock does.
    flow(name="bench-warm-up")(lambda: None)()
    started = time.perf_counter()
    result = score_flow(job=job, as_of=day)
    wall = time.perf_counter() - started
    seconds = result["timings"]["total_s"]
    timings = result["timings"]  # per stage, from mlpipe.runs
    return {
        "rows": result["rows_scored"],
        "seconds": seconds,
        "wall_s": wall,
        "peak_rss_mb": _peak_rss_mb(),
        "timings": timings,
    }


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
    scores = model.load().predict_proba(to_matrix(frame, spec))
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


def worker_script(day: date, job: str) -> dict:
    """The hand-written reference: no checks, no quarantine, no gates, no history. Three threads in a
    pipeline: key ranges read with ADBC into Arrow and encoded with Arrow compute, inplace_predict,
    binary COPY into a fresh table; then the primary key and a rename."""
    import queue
    import threading

    import adbc_driver_postgresql.dbapi as adbc
    import numpy as np
    import psycopg
    import pyarrow as pa
    import pyarrow.compute as pc
    from psycopg import sql

    from mlpipe import registry
    from mlpipe.copyio import copy_in_binary, with_text_keys
    from mlpipe.db import connection, database_url
    from mlpipe.features import native_categoricals
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    settings = Settings()
    spec = load_job(job, settings)
    url = database_url(settings)
    table = sql.Identifier("demo", job)
    text_key = spec.entity.type == "text"
    with connection(url) as conn:
        booster = registry.champion(conn, job).load().booster
        # Key ranges of 200k rows, whatever the key's type.
        bounds = [
            row[0]
            for row in conn.execute(
                sql.SQL(
                    "select entity_id from (select entity_id, row_number() over (order by entity_id) as n"
                    " from {}) as numbered where n %% %s = 1 order by 1"
                ).format(table),
                [200_000],
            )
        ]
        select = sql.SQL("select entity_id, {} from {} where entity_id >= %s and entity_id < %s").format(
            sql.SQL(", ").join(map(sql.Identifier, spec.features)), table
        )
        queries = [
            psycopg.ClientCursor(conn).mogrify(select, [lo, hi]) if hi is not None else None
            for lo, hi in zip(bounds, [*bounds[1:], None], strict=True)
        ]
        queries[-1] = psycopg.ClientCursor(conn).mogrify(
            sql.SQL("select entity_id, {} from {} where entity_id >= %s").format(
                sql.SQL(", ").join(map(sql.Identifier, spec.features)), table
            ),
            [bounds[-1]],
        )
    key_field = [] if text_key else [("key", ">i8")]
    out_layout = np.dtype(
        [("fields", ">i2"), ("key_len", ">i4"), *key_field, ("score_len", ">i4"), ("score", ">f8")]
    )
    native = native_categoricals(spec)  # codes (NaN: NULL or unknown) rather than one-hot
    width = sum(
        len(f.categories) if f.kind == "categorical" and not native else 1 for f in spec.features.values()
    )
    features, scored = queue.Queue(maxsize=2), queue.Queue(maxsize=2)

    def encode(rows: pa.Table) -> np.ndarray:
        matrix = np.zeros((rows.num_rows, width), dtype=np.float32)
        at = 0
        for name, feature in spec.features.items():
            column = rows.column(name)
            if feature.kind == "categorical":
                codes = pc.index_in(column, value_set=pa.array(feature.categories)).to_numpy(
                    zero_copy_only=False
                )
                if native:
                    matrix[:, at] = codes
                    at += 1
                    continue
                known = ~np.isnan(codes)
                matrix[np.flatnonzero(known), at + codes[known].astype(np.intp)] = 1.0
                at += len(feature.categories)
            else:
                matrix[:, at] = column.to_numpy(zero_copy_only=False)  # NULL: NaN
                at += 1
        return matrix

    def read() -> None:
        with adbc.connect(url, autocommit=True) as reader, reader.cursor() as cursor:
            for query in queries:
                cursor.execute(query)
                rows = cursor.fetch_arrow_table()
                keys = rows.column("entity_id").to_numpy(zero_copy_only=False)
                features.put((keys, encode(rows)))
        features.put(None)

    def write() -> None:
        key_type = sql.SQL("text" if text_key else "bigint")
        with connection(url) as conn:
            conn.execute("drop table if exists demo.script_scores_new")
            conn.execute(
                sql.SQL(
                    "create table demo.script_scores_new (entity_id {} not null, score float8 not null)"
                ).format(key_type)
            )
            while (item := scored.get()) is not None:
                keys, scores = item
                rows = np.empty(len(keys), dtype=out_layout)
                rows["fields"], rows["score_len"], rows["score"] = 2, 8, scores
                if text_key:
                    rows = with_text_keys(rows, keys)
                else:
                    rows["key_len"], rows["key"] = 8, keys
                copy_in_binary(conn, "copy demo.script_scores_new from stdin (format binary)", [rows])
            conn.execute("alter table demo.script_scores_new add primary key (entity_id)")
            conn.execute("drop table if exists demo.script_scores")
            conn.execute("alter table demo.script_scores_new rename to script_scores")

    started = time.perf_counter()
    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    total = 0
    while (item := features.get()) is not None:
        keys, matrix = item
        scored.put((keys, booster.inplace_predict(matrix)))
        total += len(keys)
    scored.put(None)
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"rows": total, "seconds": seconds, "wall_s": seconds, "peak_rss_mb": _peak_rss_mb()}


def worker_explain(day: date, job: str) -> dict:
    """Rows per second of ways to explain scores, on one chunk of the job's rows: the surrogate mlpipe
    writes (contributions and the JSON), XGBoost's approximate contributions, exact TreeSHAP; and
    plain prediction for scale."""
    import xgboost as xgb

    from mlpipe import registry
    from mlpipe.chunks import explainer
    from mlpipe.db import connection, database_url
    from mlpipe.extract import plan_chunks, read_features
    from mlpipe.features import to_matrix
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    settings = Settings()
    spec = load_job(job, settings)
    with connection(database_url(settings)) as conn:
        version = registry.champion(conn, job)
        first = plan_chunks(conn, spec, day, 200_000)[1][0]
        frame = read_features(conn, spec, day, first)
    matrix = to_matrix(frame, spec)
    model = version.load()
    surrogate, writer = explainer(version, 3)

    def rate(rows: int, work) -> float:
        started = time.perf_counter()
        work(matrix[:rows])
        return rows / (time.perf_counter() - started)

    out = {
        "predict_rows_per_s": rate(len(matrix), model.predict_proba),
        "reasons_rows_per_s": rate(len(matrix), lambda m: writer.encode(surrogate.contributions(m))),
        "surrogate_r2": version.reference["explainer"]["r2"],
    }
    booster = getattr(model, "booster", None)
    if booster is not None:  # XGBoost models: its own contribution methods, for comparison
        out["xgb_approx_rows_per_s"] = rate(
            20_000, lambda m: booster.predict(xgb.DMatrix(m), pred_contribs=True, approx_contribs=True)
        )
        out["treeshap_rows_per_s"] = rate(
            2_000, lambda m: booster.predict(xgb.DMatrix(m), pred_contribs=True)
        )
    return out


def reasons_jobs(home: Path, job: str) -> dict[str, str]:
    """Copies of the job with reasons off and on (3), as MLPIPE_JOBS_PATH values; the same trained
    model serves both (reasons do not change the features)."""
    import shutil

    import yaml

    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    source = load_job(job, Settings()).folder
    paths = {}
    for label, top in (("off", 0), ("on", 3)):
        folder = home / f"jobs-reasons-{label}" / job
        shutil.copytree(source, folder, dirs_exist_ok=True)
        spec = yaml.safe_load((folder / "job.yaml").read_text())
        spec.setdefault("outputs", {})["reasons"] = top
        (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        paths[label] = json.dumps([str(folder.parent)])
    return paths


def run_worker(path: str, day: date, job: str, env: dict) -> dict:
    from bench.common import run_json

    return run_json(
        __file__, ["--worker", path, "--as-of", day.isoformat(), "--job", job], env, f"{path} path"
    )


# Rows each benchmark shape's model trains on (mixed: fewer, as when it had 1,049 one-hot inputs).
TRAIN_ROWS = {"wide": 200_000, "mixed": 50_000}


def _generator(shape: str):
    from mlpipe.demo import mixed, wide

    return {"wide": wide, "mixed": mixed}[shape]


def prepare(shape: str, url: str, settings, seed: int) -> tuple[str, float, float]:
    """Data and a trained model for the shape; returns (job, generate seconds, train seconds)."""
    from mlpipe import train
    from mlpipe.db import connection
    from mlpipe.spec import load_job

    job = "churn" if shape == "demo" else shape
    generated = 0.0
    if shape != "demo":
        started = time.perf_counter()
        with connection(url) as conn:
            _generator(shape).generate(conn, TRAIN_ROWS[shape], seed=seed)
        generated = time.perf_counter() - started
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
    """The data to score: N demo customers, or N rows of the shape's table. Returns seconds."""
    from mlpipe.db import connection
    from mlpipe.demo import world

    started = time.perf_counter()
    with connection(url) as conn:
        if shape == "demo":
            summary = world.generate(conn, entities, seed=seed)
            print(f"  {summary.events:,} events, {summary.payments:,} payments", flush=True)
        else:
            _generator(shape).generate(conn, entities, seed=seed + 1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=["demo", "wide", "mixed"], nargs="+", default=["demo"])
    parser.add_argument("--entities", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-naive", action="store_true", help="leave the naive path out")
    parser.add_argument(
        "--naive-max", type=int, default=1_000_000, help="largest size the naive path runs at"
    )
    parser.add_argument("--chunk-rows", type=int, default=None, help="MLPIPE_CHUNK_ROWS for the mlpipe path")
    parser.add_argument(
        "--also-chunk-rows",
        type=int,
        nargs="+",
        default=[],
        help="also run the mlpipe path with these MLPIPE_CHUNK_ROWS, side by side (path mlpipe@N)",
    )
    parser.add_argument("--worker", choices=["mlpipe", "naive", "script", "explain"], help=argparse.SUPPRESS)
    parser.add_argument("--job", default="churn", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        workers = {"mlpipe": worker_mlpipe, "naive": worker_naive, "script": worker_script}
        worker = {**workers, "explain": worker_explain}[args.worker]
        print(json.dumps(worker(args.as_of, args.job)))
        return

    from bench.common import scratch, worker_env
    from mlpipe.settings import Settings

    home, url = scratch()
    env = worker_env(url, home)
    if args.chunk_rows:
        env["MLPIPE_CHUNK_ROWS"] = str(args.chunk_rows)
    settings = Settings(database_url=url, home=home)
    shapes = list(dict.fromkeys(args.shape))
    generate_s = {}
    if "demo" in shapes:  # the demo model trains on the world it scores
        print(f"generating {args.entities[0]:,} customers ...", flush=True)
        generate_s["demo"] = fill("demo", url, args.entities[0], args.seed)
    prepared = {shape: prepare(shape, url, settings, args.seed) for shape in shapes}
    runs = []
    for size in args.entities:
        for shape in shapes:
            job, _, train_s = prepared[shape]
            if shape != "demo" or size != args.entities[0]:
                print(f"filling {size:,} {shape} entities ...", flush=True)
                generate_s[shape] = fill(shape, url, size, args.seed)
            jobs_path = reasons_jobs(home, job)
            plain_env = {**env, "MLPIPE_JOBS_PATH": jobs_path["off"]}
            reasons_env = {**env, "MLPIPE_JOBS_PATH": jobs_path["on"]}
            results = {
                "mlpipe": run_worker("mlpipe", date.today(), job, plain_env),
                "mlpipe+reasons": run_worker("mlpipe", date.today(), job, reasons_env),
            }
            for rows in args.also_chunk_rows:
                chunked_env = {**plain_env, "MLPIPE_CHUNK_ROWS": str(rows)}
                results[f"mlpipe@{rows}"] = run_worker("mlpipe", date.today(), job, chunked_env)
            if shape != "demo":  # the hand-written script reads the shape's table itself
                results["script"] = run_worker("script", date.today(), job, plain_env)
            if not args.skip_naive and size <= args.naive_max:
                results["naive"] = run_worker("naive", date.today(), job, plain_env)
            first = size == args.entities[0]
            explain = run_worker("explain", date.today(), job, reasons_env) if first else None
            runs.append({"shape": shape, **summarize(size, results, generate_s[shape], train_s, explain)})
            _print(shape, size, results, explain)
        _compare_shapes(runs, size)
    print(json.dumps({**runs[0], "runs": runs}))


def _print(shape: str, size: int, results: dict, explain: dict | None) -> None:
    header = f"{'entities':>12}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}"
    print(f"\n{'path (' + shape + ')':<24}{header}")
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        print(
            f"{name:<24}{size:>12,}{r['rows']:>12,}{r['seconds']:>10.2f}{rate:>12,.0f}"
            f"{r['peak_rss_mb']:>14,.0f}",
            flush=True,
        )
    for name, r in results.items():
        if "timings" in r:
            print(f"{name} stage timings: {r['timings']}", flush=True)
    if explain:
        print(
            "\nexplaining one chunk (rows/s): "
            + ", ".join(f"{k} {v if v is None else format(v, ',.3g')}" for k, v in explain.items())
        )


def _compare_shapes(runs: list[dict], size: int) -> None:
    """Each non-wide shape's rows/s against the wide shape's at the same size (same invocation)."""
    at_size = {run["shape"]: run for run in runs if run["entities"] == size}
    if "wide" not in at_size:
        return
    for shape, run in at_size.items():
        if shape != "wide":
            run["vs_wide"] = round(run["mlpipe_rows_per_s"] / at_size["wide"]["mlpipe_rows_per_s"], 2)
            print(f"{shape} at {size:,}: {run['vs_wide']}x the wide shape's rows/s", flush=True)


def summarize(size: int, results: dict, generate_s: float, train_s: float, explain: dict | None) -> dict:
    def rate(path: str) -> float:
        return results[path]["rows"] / results[path]["seconds"]

    out = {
        "entities": size,
        "rows_scored": results["mlpipe"]["rows"],
        "generate_s": round(generate_s, 2),
        "train_s": round(train_s, 2),
    }
    for path, prefix in (
        ("mlpipe", "mlpipe"),
        ("mlpipe+reasons", "reasons"),
        ("script", "script"),
        ("naive", "naive"),
    ):
        if path in results:
            out.update(
                {
                    f"{prefix}_seconds": round(results[path]["seconds"], 3),
                    f"{prefix}_rows_per_s": round(rate(path)),
                    f"{prefix}_peak_rss_mb": round(results[path]["peak_rss_mb"]),
                }
            )
    # Reasons cost as a share of scoring time: at most 1.0 means "no more than scoring itself".
    out["reasons_extra_time_share"] = round(
        results["mlpipe+reasons"]["seconds"] / results["mlpipe"]["seconds"] - 1, 3
    )
    if "script" in results:
        out["vs_script"] = round(rate("mlpipe") / rate("script"), 2)
    for path in results:
        if path.startswith("mlpipe@"):  # another chunk size
            out[f"{path}_rows_per_s"] = round(rate(path))
            out[f"{path}_timings"] = results[path].get("timings")
    if "naive" in results:
        out["speedup"] = round(rate("mlpipe") / rate("naive"), 2)
    if explain:
        out["explain"] = {k: None if v is None else round(v, 3) for k, v in explain.items()}
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
