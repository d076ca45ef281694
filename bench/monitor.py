"""Monitoring benchmark: what drift histograms cost the scoring run, what the monitor costs for one
matured day, and Evidently's data-drift preset on the same day's data against the same training rows.

    python bench/monitor.py --entities 1000000
    python bench/monitor.py --entities 10000000 --repeats 3 --evidently-timeout 10800
    python bench/monitor.py --entities 100000 --skip-evidently

Shape: the `wide` job (30 numeric inputs, XGBoost 300x6) trained on 200k rows (kept as
demo.wide_reference, Evidently's reference), then demo.wide refilled with N rows. The scored day is
horizon + 1 days ago, so its outcomes (jobs/wide/outcomes.sql) have matured when the monitor runs today.
- scoring: the same day scored in a fresh process with the model's reference histograms removed
  from mlpipe.models.reference (chunks then count nothing), then with them put back, `--repeats` times
  in turn; the fastest of each; histograms_extra_share = with / without - 1. Seconds are the run's own
  (lock to publish, from its timings), with Prefect's local API started before the clock.
- monitor: mlpipe.monitor.monitor() as of today in a fresh process: drift of the day from the counted
  histograms, estimates from the score bins the chunks counted, realized metrics by merging the day's
  rows with its outcomes (demo.wide_outcomes, keyed) inside PostgreSQL. monitor_breakdown_s: its parts
  (drift, bins, join, judge, key_figures, from the monitor run's timings), then the day queries timed
  again on their own: a scan of the day's scores (what the stored bins replace), reading the stored
  bins, and the join to each outcome source (the narrow keyed table merged by index, as the monitor
  does: in key ranges at once, then as one range; the 30-column demo.wide hashed, as before).
  join_plan: the join's EXPLAIN, node names only. Peak RSS is the process's own (VmHWM); the database
  backend's peak private memory (USS, sampled: the monitor's own connection, not those of its other
  key ranges) is given beside it when the server runs on this machine.
- evidently: Evidently 0.7.23's DataDriftPreset, current = the N rows, reference = the 200k training
  rows, both read from PostgreSQL by binary COPY into one float64 frame each. Evidently 0.7.23 does not
  import with pandas 3, which the project uses, so it is never installed in the project's environment
  (nor in its `bench` extra, which holds only psutil): this script creates its own virtualenv under
  --cache (default ~/.cache/mlpipe/bench-evidently-0.7.23) on first use with
  `pip install evidently==0.7.23 "pandas<3" "psycopg[binary]"` and runs the peer there as a
  subprocess; its peak RSS is the peer's own (VmHWM). `--evidently-timeout` (default 4 h) bounds it;
  a run killed by the kernel (out of memory) or past the limit is reported as such, not as a figure.
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set (its demo schema is replaced), else a
temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

EVIDENTLY = ("evidently==0.7.23", "pandas<3", "psycopg[binary]>=3.2,<4")
FEATURES = [f"f{i:02d}" for i in range(1, 31)]
BLOCK = 500_000
MONITOR_PARTS = ("drift_s", "bins_s", "join_s", "judge_s", "key_figures_s")
# The wide job's outcomes as they were read before demo.wide_outcomes: from the 30-column table.
WIDE_OUTCOMES = (
    "select entity_id, label as outcome, %(cutoff)s::timestamptz + interval '1 day' as observed_at "
    "from demo.wide"
)


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlpipe"


def worker_monitor(today: date, job: str) -> dict:
    """Run the monitor once as of `today`; its time, this process's peak RSS and the backend's."""
    from bench.score import _peak_rss_mb
    from mlpipe import monitor
    from mlpipe.db import connection, database_url
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    settings = Settings()
    spec = load_job(job, settings)
    with connection(database_url(settings), autocommit=True) as conn:
        backend = BackendMemory(conn.execute("select pg_backend_pid()").fetchone()[0])
        started = time.perf_counter()
        result = monitor.monitor(conn, spec, today)
        seconds = time.perf_counter() - started
        backend.stop()
        realized = conn.execute(
            """select as_of, n, roc_auc from mlpipe.performance
               where job = %s and matured and arm = 'champion'""",
            [job],
        ).fetchall()
        parts = conn.execute("select timings from mlpipe.runs where run_id = %s", [result.run_id]).fetchone()[
            0
        ]
        day = today - timedelta(days=spec.training.horizon_days + 1)
        breakdown = {
            **{name.removesuffix("_s"): parts[name] for name in MONITOR_PARTS if name in parts},
            **_monitor_breakdown(conn, spec, day),
        }
        plan = _join_plan(conn, spec, day)
    return {
        "seconds": seconds,
        "breakdown_s": breakdown,
        "join_plan": plan,
        "peak_rss_mb": _peak_rss_mb(),
        "backend_peak_uss_mb": backend.peak_mb,
        "drift_days": len(result.drift_days),
        "performance_days": len(result.performance_days),
        "realized": [(day.isoformat(), n, auc) for day, n, auc in realized],
        "findings": [str(f) for f in result.findings],
    }


def _monitor_breakdown(conn, spec, day: date) -> dict:
    """The monitor's day queries timed again on their own (warm cache): the scan of the day that the
    stored bins replace, reading those bins, and the join to each outcome source (the narrow keyed
    demo.wide_outcomes merged in key order, as the monitor does: in key ranges at once, then as one
    range; the 30-column demo.wide hashed, as before)."""
    from mlpipe import monitor, performance

    run_id = conn.execute(
        "select run_id from mlpipe.partitions where job = %s and kind = 'published' and as_of = %s",
        [spec.name, day],
    ).fetchone()[0]
    stored = performance.stored_bins(conn, spec, day, run_id)
    narrow, params = monitor._outcomes(spec)
    wide, _ = monitor._outcomes(spec, WIDE_OUTCOMES)
    timed = {}
    for name, work in (
        ("scan_scores_only", lambda: performance.day_bins(conn, spec, day)),
        ("stored_bins", lambda: performance.stored_bins(conn, spec, day, run_id)),
        (
            "scores_and_outcomes",
            lambda: performance.day_bins(
                conn, spec, day, "published", (narrow, params(day)), stored, merge_join=True
            ),
        ),
        (
            "scores_and_outcomes_one_range",
            lambda: performance.day_bins(
                conn, spec, day, "published", (narrow, params(day)), stored, merge_join=True, ranges=1
            ),
        ),
        (
            "scores_and_wide_outcomes",
            lambda: performance.day_bins(conn, spec, day, "published", (wide, params(day)), stored),
        ),
    ):
        started = time.perf_counter()
        work()
        timed[name] = round(time.perf_counter() - started, 3)
    return timed


def _join_plan(conn, spec, day: date) -> list[str]:
    """The plan of the monitor's join of the day to its outcomes (EXPLAIN, as the monitor sets it), node names
    only: a Sort under the Merge Join would mean the outcomes' key has no index."""
    from psycopg import sql

    from mlpipe import monitor, performance

    query, params = monitor._outcomes(spec)
    plan = []
    with conn.transaction():
        for setting in performance.MERGE_JOIN_SETTINGS:
            conn.execute(setting)
        conn.execute(sql.SQL("set local work_mem = {}").format(sql.Literal(performance.WORK_MEM)))
        explained = performance._day_query(spec, performance._day_table(conn, spec, day, "published"), query)
        for (line,) in conn.execute(sql.SQL("explain ") + explained, {**params(day), "day": day}):
            if "->" in line or not plan:
                plan.append(line.strip().removeprefix("-> ").split("  (")[0])
    return plan


class BackendMemory:
    """Samples a local PostgreSQL backend's private memory (USS) every 50 ms; None when not local."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.peak_mb: float | None = None
        try:
            self.process = psutil.Process(pid)
            self.process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # a server on another machine
            self.process = None
            return
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        import psutil

        while not self.done.wait(0.05):
            try:
                uss = self.process.memory_full_info().uss / 2**20
            except psutil.NoSuchProcess:
                return
            self.peak_mb = max(self.peak_mb or 0.0, uss)

    def stop(self) -> None:
        if self.process is not None:
            self.done.set()
            self.thread.join()


def peer_evidently(url: str, reference: str, current: str) -> dict:
    """(Runs in the Evidently virtualenv.) DataDriftPreset on two tables read from PostgreSQL."""
    import pandas as pd
    import psycopg
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from bench.score import _peak_rss_mb

    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        frames = [pd.DataFrame(_read_matrix(conn, table), columns=FEATURES) for table in (reference, current)]
    loaded = time.perf_counter()
    definition = DataDefinition(numerical_columns=FEATURES)
    ref, cur = (Dataset.from_pandas(frame, data_definition=definition) for frame in frames)
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    drifted = snapshot.dict()["metrics"][0]["value"]  # DriftedColumnsCount comes first
    return {
        "load_s": loaded - started,
        "seconds": time.perf_counter() - loaded,
        "peak_rss_mb": _peak_rss_mb(),
        "rows": len(frames[1]),
        "drifted_columns": drifted.get("count"),
    }


def _read_matrix(conn, table: str):
    """The table's 30 features as one float64 matrix, by binary COPY of key ranges (no row objects)."""
    import numpy as np
    from psycopg import sql

    layout = np.dtype(
        [("fields", ">i2")] + [item for name in FEATURES for item in ((f"{name}_len", ">i4"), (name, ">f8"))]
    )
    name = sql.Identifier("demo", table)
    rows, low, high = conn.execute(
        sql.SQL("select count(*), min(entity_id), max(entity_id) from {}").format(name)
    ).fetchone()
    out, filled = np.empty((rows, len(FEATURES))), 0
    query = sql.SQL(
        "copy (select {} from {} where entity_id >= %s and entity_id < %s) to stdout (format binary)"
    ).format(sql.SQL(", ").join(map(sql.Identifier, FEATURES)), name)
    for start in range(low, high + 1, BLOCK):
        with conn.cursor().copy(query, [start, start + BLOCK]) as copy:
            data = b"".join(copy)
        block = np.frombuffer(data[19:-2], dtype=layout)  # binary COPY header and trailer
        for i, feature in enumerate(FEATURES):
            out[filled : filled + len(block), i] = block[feature]
        filled += len(block)
    return out[:filled]


def evidently_python(cache: Path) -> Path:
    """The Evidently virtualenv's interpreter, created and filled on first use."""
    venv = cache / "bench-evidently-0.7.23"
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    if not marker.is_file() or marker.read_text() != "\n".join(EVIDENTLY):
        print(f"creating {venv} with {' '.join(EVIDENTLY)} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *EVIDENTLY], check=True)
        marker.write_text("\n".join(EVIDENTLY))
    return python


def run_evidently(python: Path, url: str, timeout_s: float) -> dict:
    """The peer in its own process: its figures, or why there are none."""
    root = Path(__file__).resolve().parents[1]
    command = [str(python), __file__, "--peer", "--url", url]
    try:
        out = subprocess.run(
            command,
            env={**os.environ, "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish within {timeout_s:.0f} s"}
    if out.returncode < 0:
        return {"status": f"killed by signal {-out.returncode} (9: the kernel, out of memory)"}
    if out.returncode != 0:
        raise SystemExit(f"evidently peer failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return {"status": "finished", **json.loads(out.stdout.strip().splitlines()[-1])}


def run_monitor(env: dict) -> dict:
    from bench.common import run_json

    return run_json(__file__, ["--worker", "monitor", "--as-of", date.today().isoformat()], env, "monitor")


def set_histograms(url: str, histograms: dict | None) -> dict:
    """Remove the wide champion's reference histograms (None) or put them back; returns what was there."""
    from psycopg.types.json import Jsonb

    from mlpipe.db import connection

    with connection(url) as conn:
        before = conn.execute(
            "select reference -> 'histograms' from mlpipe.models where job = 'wide'"
        ).fetchone()[0]
        if histograms is None:
            conn.execute("update mlpipe.models set reference = reference - 'histograms' where job = 'wide'")
        else:
            conn.execute(
                """update mlpipe.models set reference = jsonb_set(reference, '{histograms}', %s)
                   where job = 'wide'""",
                [Jsonb(histograms)],
            )
    return before


def score_pair(url: str, day: date, env: dict, repeats: int) -> dict:
    """Fastest scoring of the day without and with drift histograms, taking turns."""
    from bench.score import run_worker

    histograms = set_histograms(url, None)
    best: dict[str, dict] = {}
    for _ in range(repeats):
        for label, value in (("without", None), ("with", histograms)):
            set_histograms(url, value)
            result = run_worker("mlpipe", day, "wide", env)
            print(
                f"  scored {result['rows']:,} rows {label} histograms in {result['seconds']:.2f}s", flush=True
            )
            if label not in best or result["seconds"] < best[label]["seconds"]:
                best[label] = result
    return best


def keep_reference(url: str) -> None:
    """The rows the model was trained on, for Evidently's reference (demo.wide is refilled next)."""
    from mlpipe.db import connection

    with connection(url) as conn:
        conn.execute("drop table if exists demo.wide_reference")
        conn.execute("create table demo.wide_reference as select * from demo.wide")
        conn.execute("alter table demo.wide_reference add primary key (entity_id)")


def bench(args: argparse.Namespace) -> dict:
    from bench.common import scratch, worker_env
    from bench.score import fill, prepare
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    home, url = scratch()
    env = worker_env(url, home)
    settings = Settings(database_url=url, home=home)
    _, _, train_s = prepare("wide", url, settings, args.seed)
    keep_reference(url)
    print(f"filling {args.entities:,} entities ...", flush=True)
    generate_s = fill("wide", url, args.entities, args.seed)
    day = date.today() - timedelta(days=load_job("wide", settings).training.horizon_days + 1)
    scored = score_pair(url, day, env, args.repeats)
    print("monitoring ...", flush=True)
    monitored = run_monitor(env)
    print(f"  {json.dumps(monitored)}", flush=True)
    peer = {"status": "skipped"}
    if not args.skip_evidently:
        print("evidently DataDriftPreset ...", flush=True)
        peer = run_evidently(evidently_python(args.cache), url, args.evidently_timeout)
        print(f"  {json.dumps(peer)}", flush=True)
    return summarize(args.entities, day, scored, monitored, peer, generate_s, train_s)


def summarize(entities, day, scored, monitored, peer, generate_s, train_s) -> dict:
    without, with_ = scored["without"]["seconds"], scored["with"]["seconds"]
    realized = monitored["realized"][0] if monitored["realized"] else (None, None, None)
    return {
        "entities": entities,
        "day": day.isoformat(),
        "rows_scored": scored["with"]["rows"],
        "score_s": round(without, 3),
        "score_with_histograms_s": round(with_, 3),
        "histograms_extra_share": round(with_ / without - 1, 4),
        "score_peak_rss_mb": round(scored["with"]["peak_rss_mb"]),
        "monitor_s": round(monitored["seconds"], 3),
        "monitor_share_of_scoring": round(monitored["seconds"] / with_, 4),
        "monitor_peak_rss_mb": round(monitored["peak_rss_mb"]),
        "monitor_breakdown_s": monitored["breakdown_s"],
        "monitor_backend_peak_uss_mb": monitored["backend_peak_uss_mb"]
        and round(monitored["backend_peak_uss_mb"]),
        "realized_roc_auc": realized[2],
        "realized_n": realized[1],
        "evidently_status": peer["status"],
        "evidently_s": peer.get("seconds") and round(peer["seconds"], 2),
        "evidently_load_s": peer.get("load_s") and round(peer["load_s"], 2),
        "evidently_peak_rss_mb": peer.get("peak_rss_mb") and round(peer["peak_rss_mb"]),
        "evidently_drifted_columns": peer.get("drifted_columns"),
        "generate_s": round(generate_s, 2),
        "train_s": round(train_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=1, help="scoring pairs; the fastest of each counts")
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--evidently-timeout", type=float, default=4 * 3600, help="seconds (default 4 h)")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the Evidently venv lives")
    parser.add_argument("--worker", choices=["monitor"], help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.today(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        print(json.dumps(peer_evidently(args.url, "wide_reference", "wide")))
    elif args.worker:
        print(json.dumps(worker_monitor(args.as_of, "wide")))
    else:
        print(json.dumps(bench(args)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
