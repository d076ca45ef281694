"""Reasons benchmark: what each part of the top reasons costs, and lookups through the view that builds
their JSON against a bare table that stores it.

    python bench/reasons.py --entities 1000000

On N rows of 30 numeric features and a surrogate fitted to a wide-shaped model (30 inputs, 16 bins):
  client:  the surrogate's contributions and the top-3 codes per chunk of 100k rows (rows/s);
  write:   the rows of a run table written by binary COPY, then its primary key, side by side: without
           reasons, with reason codes (smallint[][], what mlpipe writes) and with the same reasons as
           jsonb (what it wrote before: the server parses every JSON document);
  lookup:  one key at a time on one connection, prepared and ad hoc, taken in turn: through a view
           that builds `reasons` from the codes (explain.reasons_sql, as predictions.<job> does) and from
           a bare table holding the very same rows with `reasons` as stored jsonb.
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set, else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from psycopg import sql

FEATURES = [f"f{i:02d}" for i in range(1, 31)]
CHUNK = 100_000
TOP = 3
COLUMNS = (
    "entity_id bigint not null, score double precision not null, decision boolean not null, "
    "percentile real not null, model_version text not null default 'bench-v1', "
    "as_of date not null default '2026-01-01', run_id bigint not null default 1, "
    "reasons jsonb, reason_codes smallint[]"
)


def surrogate(seed: int):
    """A surrogate fitted as training fits one, to a non-linear log-odds of 30 inputs."""
    from mlpipe.explain import Surrogate

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(100_000, len(FEATURES))).astype(np.float32)
    logit = 1.2 * x[:, 0] - 0.8 * x[:, 1] + 0.6 * x[:, 2] * x[:, 3] + np.sin(x[:, 4]) + 0.1 * x[:, 5:].sum(1)
    return Surrogate.fit(x[:80_000], logit[:80_000], FEATURES, (x[80_000:], logit[80_000:]))


def client(explainer, entities: int, seed: int) -> tuple[dict, list[np.ndarray]]:
    """Seconds spent on contributions and codes over every chunk; the codes."""
    from mlpipe.explain import ReasonWriter

    writer = ReasonWriter(explainer.features, TOP)
    rng = np.random.default_rng(seed + 1)
    spent = {"contributions_s": 0.0, "codes_s": 0.0}
    codes = []
    for first in range(0, entities, CHUNK):
        matrix = rng.normal(size=(min(CHUNK, entities - first), len(FEATURES))).astype(np.float32)
        started = time.perf_counter()
        contributions = explainer.contributions(matrix)
        middle = time.perf_counter()
        codes.append(writer.encode(contributions))
        spent["contributions_s"] += middle - started
        spent["codes_s"] += time.perf_counter() - middle
    return spent, codes


def write(conn, table: str, codes: list[np.ndarray], form: str) -> dict:
    """Load one run-shaped table by binary COPY with reasons in `form`, then its primary key."""
    from mlpipe.copyio import copy_in_binary, copy_predictions

    target = sql.Identifier("bench_reasons", table)
    conn.execute(sql.SQL("drop table if exists {}").format(target))
    conn.execute(sql.SQL("create table {} (" + COLUMNS + ") with (autovacuum_enabled = off)").format(target))
    started = time.perf_counter()
    if form == "jsonb":  # the same reasons as jsonb documents, sent in jsonb's binary COPY form
        statement = sql.SQL(
            "copy {} (entity_id, score, decision, percentile, reasons) from stdin (format binary)"
        ).format(target)
        copy_in_binary(conn, statement, [np.load(BLOCKS / f"jsonb-{i}.npy") for i in range(len(codes))])
    else:
        first = 0
        for chunk in codes:
            keys = np.arange(first, first + len(chunk), dtype=np.int64)
            score = np.random.default_rng(first).random(len(chunk))
            reasons = chunk if form == "codes" else None
            copy_predictions(
                conn, "bench_reasons", table, keys, score, score >= 0.5, (score * 100).astype(np.float32),
                reasons=reasons,
            )  # fmt: skip
            first += len(chunk)
    loaded = time.perf_counter()
    conn.execute(sql.SQL("alter table {} add primary key (entity_id, as_of)").format(target))
    conn.execute(sql.SQL("analyze {}").format(target))
    size = conn.execute("select pg_total_relation_size(%s)", [f"bench_reasons.{table}"]).fetchone()[0]
    return {
        "copy_s": round(loaded - started, 3),
        "index_s": round(time.perf_counter() - loaded, 3),
        "mb": round(size / 1e6, 1),
    }


BLOCKS = Path()


def jsonb_blocks(conn, codes: list[np.ndarray]) -> None:
    """The codes table's rows with their reasons as JSON, saved as binary COPY blocks of jsonb, so that
    the jsonb load sends exactly what the old writer sent (fixed rows, the JSON text after its version
    byte) and pays only for the server's parsing. Built through the view's own SQL."""
    from mlpipe.copyio import prediction_rows

    first = 0
    for i, chunk in enumerate(codes):
        rows = conn.execute(
            "select score, reasons::text from bench_reasons.codes_view "
            "where entity_id >= %s and entity_id < %s order by entity_id",
            [first, first + len(chunk)],
        ).fetchall()
        texts = [text.encode() for _, text in rows]
        width = max(len(t) for t in texts)
        padded = np.frombuffer(b"".join(t.ljust(width) for t in texts), dtype=np.uint8).reshape(-1, width)
        base = prediction_rows(
            np.arange(first, first + len(chunk), dtype=np.int64),
            np.array([s for s, _ in rows]),
            np.array([s >= 0.5 for s, _ in rows]),
            np.array([s * 100 for s, _ in rows], dtype=np.float32),
        )
        layout = np.dtype(base.dtype.descr + [("len", ">i4"), ("version", "u1"), ("json", "u1", (width,))])
        out = np.empty(len(base), dtype=layout)
        for name in base.dtype.names:
            out[name] = base[name]
        out["fields"], out["len"], out["version"], out["json"] = 5, width + 1, 1, padded
        np.save(BLOCKS / f"jsonb-{i}.npy", out)
        first += len(chunk)


def interleaved(conn, queries: list[sql.Composable], keys: np.ndarray, count: int, prepare: bool) -> list:
    """Latencies (ms) of the queries taken in turn on the same random keys, so the noise of a shared
    machine falls on all of them alike."""
    picks = np.random.default_rng(1).choice(keys, count).tolist()
    out = [np.empty(count) for _ in queries]
    with conn.cursor() as cur:
        for i, key in enumerate(picks):
            for q in np.random.default_rng(i).permutation(len(queries)).tolist():
                started = time.perf_counter_ns()
                cur.execute(queries[q], [key], prepare=prepare)
                assert cur.fetchone()[7] is not None
                out[q][i] = (time.perf_counter_ns() - started) / 1e6
    return out


def main() -> None:
    global BLOCKS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000, help="lookups per path and mode")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from bench.common import scratch
    from mlpipe.db import connection
    from mlpipe.explain import reasons_sql

    home, url = scratch()
    BLOCKS = home
    explainer = surrogate(args.seed)
    spent, codes = client(explainer, args.entities, args.seed)
    rows_per_s = {k.replace("_s", "_rows_per_s"): round(args.entities / v) for k, v in spent.items()}
    print(f"client, {args.entities:,} rows: " + ", ".join(f"{k} {v:,}" for k, v in rows_per_s.items()))

    with connection(url, autocommit=True) as conn:
        conn.execute("create schema bench_reasons")
        view = sql.SQL(
            "create view bench_reasons.codes_view as select entity_id, score, decision, percentile, "
            "model_version, as_of, run_id, {} as reasons from bench_reasons.codes"
        ).format(reasons_sql(explainer.features, TOP))
        writes = {"none": write(conn, "none", codes, "none"), "codes": write(conn, "codes", codes, "codes")}
        conn.execute(view)
        jsonb_blocks(conn, codes)
        writes["jsonb"] = write(conn, "bare", codes, "jsonb")
        # The bare table holds what the view shows: the comparison is only about building the JSON.
        same = conn.execute(
            "select count(*) from bench_reasons.codes_view v join bench_reasons.bare b using (entity_id) "
            "where v.reasons = b.reasons"
        ).fetchone()[0]
        assert same == args.entities, f"view and bare table differ: {same} of {args.entities} rows agree"
        print(f"\n{'write':<8}{'copy s':>10}{'index s':>10}{'MB':>10}")
        for name, w in writes.items():
            print(f"{name:<8}{w['copy_s']:>10.2f}{w['index_s']:>10.2f}{w['mb']:>10.1f}")

        lookup = sql.SQL(
            "select entity_id, score, decision, percentile, model_version, as_of, run_id, reasons "
            "from {} where entity_id = %s"
        )
        queries = [lookup.format(sql.Identifier("bench_reasons", name)) for name in ("codes_view", "bare")]
        keys = np.arange(args.entities)
        interleaved(conn, queries, keys, 1000, prepare=True)  # warm the caches
        lookups = {}
        print(f"\n{'lookup':<18}{'p50 ms':>10}{'p99 ms':>10}")
        for mode, prepare in (("prepared", True), ("adhoc", False)):
            view_ms, bare_ms = interleaved(conn, queries, keys, args.lookups, prepare)
            for path, values in (("view", view_ms), ("table", bare_ms)):
                p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
                lookups[f"{mode}_{path}_p50_ms"], lookups[f"{mode}_{path}_p99_ms"] = (
                    round(p50, 4),
                    round(p99, 4),
                )
                print(f"{mode + ' ' + path:<18}{p50:>10.3f}{p99:>10.3f}")
            lookups[f"{mode}_view_vs_table_p99"] = round(
                lookups[f"{mode}_view_p99_ms"] / lookups[f"{mode}_table_p99_ms"], 3
            )
    write_total = {k: w["copy_s"] + w["index_s"] for k, w in writes.items()}
    out = {
        "entities": args.entities,
        **rows_per_s,
        "write": writes,
        "codes_extra_write_s": round(write_total["codes"] - write_total["none"], 3),
        "jsonb_extra_write_s": round(write_total["jsonb"] - write_total["none"], 3),
        **lookups,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
