"""Read-path benchmark: lookups by key through predictions.<job>, predictions.<job>_for (a scored key,
and an unknown one answered by the fallback) and a plain table, prepared and ad hoc, and the longest
reader stall while a day is published, with and without a long-running reader transaction.

    python bench/lookup.py --entities 1000000 --history-days 400

Publishes --history-days older days (small tables, attached to history as scoring runs attach them),
then N prediction rows with three reason codes each through mlpipe's own publish path (run table,
binary COPY, index, one swap transaction), then measures single-key lookups on one connection, as
prepared statements and as ad-hoc (unprepared) ones, then publishes the next two days while two
readers (one prepared, one ad hoc) look keys up without pause: the stall is the slowest lookup during
the swap (the day's rows are loaded and indexed before, as a scoring run does).
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set, else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from psycopg import sql


def load_day(conn, spec, day: date, keys: np.ndarray) -> tuple[int, str]:
    """Score-shaped rows for every key in a new run table, with the job's reason codes, indexed:
    everything a scoring run does before it publishes. Returns (run_id, table)."""
    from mlpipe import explain, publish
    from mlpipe.copyio import copy_predictions

    run_id = conn.execute(
        """insert into mlpipe.runs (job, kind, as_of, status)
           values (%s, 'score', %s, 'running') returning run_id""",
        [spec.name, day],
    ).fetchone()[0]
    table = publish.create_run_table(conn, spec, run_id, day, "bench-v1")
    rng = np.random.default_rng(run_id)
    scores = rng.random(len(keys))
    names = explain.job_reason_names(spec)
    contributions = rng.normal(0, 0.5, (len(keys), len(names)))
    reasons = explain.ReasonWriter(names, spec.outputs.reasons).encode(contributions)
    copy_predictions(
        conn,
        publish.DATA_SCHEMA,
        table,
        keys,
        scores,
        scores >= 0.5,
        (scores * 100).astype(np.float32),
        reasons=reasons,
    )
    publish.index_run_table(conn, table)
    return run_id, table


def publish_day(conn, spec, day: date, run_id: int, table: str, settings) -> None:
    """The publish step itself: one short transaction that swaps the day in and moves the view."""
    from mlpipe import publish

    publish.publish(
        conn,
        spec,
        day,
        run_id,
        table,
        lock_timeout_ms=settings.lock_timeout_ms,
        attempts=settings.publish_retries,
    )


def interleaved(
    conn, queries: list[str], keys: list[np.ndarray], count: int, prepare: bool = True
) -> list[np.ndarray]:
    """Latencies of several lookups taken in turn (query i reads keys[i]), so that the noise of a
    shared machine falls on all of them alike."""
    picks = np.random.default_rng(1).integers(0, len(keys[0]), count)
    out = [np.empty(count) for _ in queries]
    with conn.cursor() as cur:
        for i, pick in enumerate(picks.tolist()):
            for q in np.random.default_rng(i).permutation(len(queries)).tolist():
                started = time.perf_counter_ns()
                cur.execute(queries[q], [int(keys[q][pick])], prepare=prepare)
                cur.fetchone()
                out[q][i] = (time.perf_counter_ns() - started) / 1e6
    return out


class Reader(threading.Thread):
    """Looks keys up through the view without pause; keeps the slowest lookup."""

    def __init__(self, url: str, keys: np.ndarray, job: str = "churn", prepare: bool = True) -> None:
        super().__init__(daemon=True)
        from mlpipe.db import connect

        self.conn = connect(url, autocommit=True)
        self.keys, self.stop, self.slowest = keys, threading.Event(), 0.0
        self.query = sql.SQL("select score from {} where entity_id = %s").format(
            sql.Identifier("predictions", job)
        )
        self.lookups, self.prepare = 0, prepare

    def run(self) -> None:
        rng = np.random.default_rng(2)
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                started = time.perf_counter()
                cur.execute(self.query, [int(rng.choice(self.keys))], prepare=self.prepare)
                cur.fetchone()
                self.lookups += 1
                self.slowest = max(self.slowest, (time.perf_counter() - started) * 1000)


def stall_during_publish(
    url, conn, spec, keys, day: date, settings, *, long_reader_s: float = 0.0
) -> tuple[float, float, float]:
    """The slowest prepared and ad-hoc view lookups while the next day is published (optionally while
    another session holds a transaction open on the view for long_reader_s seconds), and the slowest
    in a quiet window just before. The day's rows are loaded and indexed first, as a scoring run
    does; the stall is what readers feel of the swap."""
    from mlpipe.db import connect

    run_id, table = load_day(conn, spec, day, keys)
    readers = [Reader(url, keys, prepare=True), Reader(url, keys, prepare=False)]
    for reader in readers:
        reader.start()
    time.sleep(0.5)
    holder = None
    if long_reader_s:
        holder = connect(url)
        holder.execute("select count(*) from predictions.churn where entity_id < 100")

        def release():
            time.sleep(long_reader_s)
            holder.commit()

        releaser = threading.Thread(target=release, daemon=True)
        releaser.start()
    # The shared machine's own noise: the slowest lookup in a window as long, without a publish.
    for reader in readers:
        reader.slowest = 0.0
    time.sleep(0.3)
    quiet = max(reader.slowest for reader in readers)
    for reader in readers:
        reader.slowest = 0.0
    started = time.perf_counter()
    publish_day(conn, spec, day, run_id, table, settings)
    print(f"published {day} in {(time.perf_counter() - started) * 1000:.1f} ms", flush=True)
    time.sleep(0.2)
    for reader in readers:
        reader.stop.set()
        reader.join()
    if holder is not None:
        releaser.join()
        holder.close()
    return readers[0].slowest, readers[1].slowest, quiet


def publish_history(conn, spec, settings, days: int, before: date) -> None:
    """`days` older days in history, one small table each, published as scoring runs publish them."""
    keys = np.arange(1, 101, dtype=np.int64)
    for n in range(days, 0, -1):
        day = before - timedelta(days=n)
        run_id, table = load_day(conn, spec, day, keys)
        publish_day(conn, spec, day, run_id, table, settings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--long-reader-s", type=float, default=3.0)
    parser.add_argument("--history-days", type=int, default=400, help="older days attached to history")
    args = parser.parse_args()

    from bench.common import scratch
    from mlpipe.db import connect
    from mlpipe.publish import ensure_job_tables
    from mlpipe.settings import Settings
    from mlpipe.spec import load_job

    home, url = scratch()
    settings = Settings(database_url=url, home=home)
    spec = load_job("churn", settings)
    conn = connect(url, autocommit=True)
    ensure_job_tables(conn, spec)
    keys = np.arange(1, args.entities + 1, dtype=np.int64)
    today = date.today()
    started = time.perf_counter()
    publish_history(conn, spec, settings, args.history_days, today - timedelta(days=2))
    print(f"published {args.history_days} older days in {time.perf_counter() - started:.1f}s", flush=True)
    started = time.perf_counter()
    run_id, table = load_day(conn, spec, today - timedelta(days=2), keys)
    publish_day(conn, spec, today - timedelta(days=2), run_id, table, settings)
    print(f"published {args.entities:,} rows in {time.perf_counter() - started:.1f}s", flush=True)
    conn.execute(
        sql.SQL("create table mlpipe_data.bench_plain as select * from {}").format(
            sql.Identifier("mlpipe_data", f"churn_r{run_id}")
        )
    )
    conn.execute("alter table mlpipe_data.bench_plain add primary key (entity_id)")
    conn.execute("analyze mlpipe_data.bench_plain")

    # predictions.churn_for needs fallback rows; a bench run has no registered model: one base rate.
    conn.execute(
        """insert into predictions.churn_fallback (segment, score, decision, percentile, model_version, as_of)
           values (null, 0.2, false, 20, 'bench-v1:base_rate', %s)""",
        [today - timedelta(days=2)],
    )
    queries = [
        "select * from predictions.churn where entity_id = %s",
        "select * from predictions.churn_for(%s)",
        "select * from predictions.churn_for(%s)",
        "select * from mlpipe_data.bench_plain where entity_id = %s",
    ]
    lookup_keys = [keys, keys, keys + len(keys), keys]  # the third: never scored, answered by the fallback
    view, fn, fn_unknown, table = interleaved(conn, queries, lookup_keys, args.lookups)
    adhoc_view, _, _, adhoc_table = interleaved(conn, queries, lookup_keys, args.lookups, prepare=False)
    # Each publish is the next day, as in daily operation: the view moves from one day to the next.
    stall, adhoc_stall, quiet = stall_during_publish(
        url, conn, spec, keys, today - timedelta(days=1), settings
    )
    stall_long, adhoc_stall_long, quiet_long = stall_during_publish(
        url, conn, spec, keys, today, settings, long_reader_s=args.long_reader_s
    )

    print(f"\n{'path':<22}{'p50 ms':>10}{'p99 ms':>10}")
    paths = (
        ("predictions.churn", view),
        ("churn_for (scored)", fn),
        ("churn_for (fallback)", fn_unknown),
        ("plain table", table),
        ("ad hoc: view", adhoc_view),
        ("ad hoc: plain table", adhoc_table),
    )
    for name, values in paths:
        print(f"{name:<22}{np.percentile(values, 50):>10.3f}{np.percentile(values, 99):>10.3f}")
    ratio = float(np.percentile(fn, 99) / np.percentile(view, 99))
    print(f"churn_for p99 / view p99: {ratio:.3f} (target <= 1.1)")
    view_over_table = float(np.percentile(view, 99) / np.percentile(table, 99))
    adhoc_over_table = float(np.percentile(adhoc_view, 99) / np.percentile(adhoc_table, 99))
    print(
        f"view p99 / table p99: prepared {view_over_table:.3f}, ad hoc {adhoc_over_table:.3f} (target <= 1.1)"
    )
    print(
        f"longest reader stall during publish (prepared / ad hoc): {stall:.1f} / {adhoc_stall:.1f} ms; "
        f"with a {args.long_reader_s:g}s reader transaction open: "
        f"{stall_long:.1f} / {adhoc_stall_long:.1f} ms "
        f"(target <= 10; lock_timeout {settings.lock_timeout_ms} ms); the slowest lookup in a 0.3 s "
        f"window without a publish: {max(quiet, quiet_long):.1f} ms (the machine's own noise)"
    )
    print(
        json.dumps(
            {
                "entities": args.entities,
                "view_p50_ms": round(float(np.percentile(view, 50)), 4),
                "view_p99_ms": round(float(np.percentile(view, 99)), 4),
                "for_p50_ms": round(float(np.percentile(fn, 50)), 4),
                "for_p99_ms": round(float(np.percentile(fn, 99)), 4),
                "for_fallback_p50_ms": round(float(np.percentile(fn_unknown, 50)), 4),
                "for_fallback_p99_ms": round(float(np.percentile(fn_unknown, 99)), 4),
                "for_over_view_p99": round(ratio, 3),
                "table_p50_ms": round(float(np.percentile(table, 50)), 4),
                "table_p99_ms": round(float(np.percentile(table, 99)), 4),
                "view_over_table_p99": round(view_over_table, 3),
                "adhoc_view_p50_ms": round(float(np.percentile(adhoc_view, 50)), 4),
                "adhoc_view_p99_ms": round(float(np.percentile(adhoc_view, 99)), 4),
                "adhoc_table_p50_ms": round(float(np.percentile(adhoc_table, 50)), 4),
                "adhoc_table_p99_ms": round(float(np.percentile(adhoc_table, 99)), 4),
                "adhoc_view_over_table_p99": round(adhoc_over_table, 3),
                "publish_max_stall_ms": round(stall, 2),
                "publish_max_stall_long_reader_ms": round(stall_long, 2),
                "adhoc_publish_max_stall_ms": round(adhoc_stall, 2),
                "adhoc_publish_max_stall_long_reader_ms": round(adhoc_stall_long, 2),
                "quiet_max_ms": round(max(quiet, quiet_long), 2),
                "long_reader_s": args.long_reader_s,
                "history_days": args.history_days,
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
