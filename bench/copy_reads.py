"""Ways of reading one chunk of features, side by side on the wide and mixed shapes.

(Not bench/copy.py: a script's folder comes first on sys.path, so that name would shadow the
standard library's `copy` module in every bench run as `python bench/NAME.py`.)

    python bench/copy_reads.py                   # 100k-row chunks, 3 repeats
    python bench/copy_reads.py --rows 200000 --repeats 5

Each way reads the same key range (the chunk) into Arrow or numpy, once in one thread and then two
chunks at once in two threads (chunk tasks run in threads: a reader that holds the GIL does not
scale). Ways:
  adbc:           mlpipe.copyio.copy_out, the reader mlpipe keeps: ADBC's PostgreSQL driver, binary
                  COPY decoded into Arrow in C (NULLs and text native);
  binary_array:   the former numeric fast path: the chunk gathered on the server into two binary
                  arrays (array_agg) and parsed with numpy; numeric, NULL-free sources only;
  csv_libpq:      the former general path: COPY ... (format csv) read by a hand-written libpq loop,
                  parsed by Arrow's CSV reader;
  csv_psycopg:    the same CSV through psycopg's own Copy iterator (`b"".join(copy)`);
  psycopg_rows:   psycopg's binary COPY with typed `read_row()`, one Python call per row.
Figures: rows/s (median of the repeats) per way, shape and thread count, and the process's CPU
seconds per wall second while reading (about 1.0 per thread when nothing waits on the GIL).
The last line is one JSON object. Uses MLPIPE_DATABASE_URL if set (its demo schema is replaced),
else a temporary embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import io
import json
import select
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql


def way_adbc(conn, query, params, types):
    from mlpipe.copyio import copy_out

    return copy_out(conn, query, params, types).num_rows


def way_binary_array(conn, query, params, types):
    key, *columns = types
    values = sql.SQL(", ").join(sql.SQL("source.{}::float8").format(sql.Identifier(c)) for c in columns)
    statement = sql.SQL(
        "select count(*), array_agg(source.{}::bigint), array_agg(array[{}]) from ({}) as source"
    ).format(sql.Identifier(key), values, query)
    with conn.transaction(), conn.cursor(binary=True) as cursor:
        cursor.execute("set local max_parallel_workers_per_gather = 0")
        cursor.execute(statement, params)
        rows, raw_keys, raw_matrix = (cursor.pgresult.get_value(0, i) for i in range(3))
    rows = int.from_bytes(rows, "big", signed=True)
    keys = _array_elements(raw_keys, ">i8", rows).astype(np.int64)
    matrix = _array_elements(raw_matrix, ">f8", rows * len(columns)).astype(np.float64)
    return len(keys) if matrix.size == rows * len(columns) else -1


def _array_elements(raw: bytes, dtype: str, count: int) -> np.ndarray:
    dimensions, has_null = struct.unpack_from(">ii", raw)
    assert not has_null
    layout = np.dtype([("length", ">i4"), ("value", dtype)])
    return np.frombuffer(raw, dtype=layout, offset=12 + 8 * dimensions, count=count)["value"]


def _csv_table(data: bytes, types) -> pa.Table:
    return pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def way_csv_libpq(conn, query, params, types):
    statement = sql.SQL("copy ({}) to stdout (format csv, header true)").format(query)
    text = psycopg.ClientCursor(conn).mogrify(statement, params).encode()
    pgconn, rows = conn.pgconn, []
    pgconn.send_query(text)
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()
    pgconn.get_result()
    while True:
        size, data = pgconn.get_copy_data(1)
        if size > 0:
            rows.append(data)
        elif size == 0:
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        else:
            break
    while pgconn.get_result() is not None:
        pass
    return _csv_table(b"".join(rows), types).num_rows


def way_csv_psycopg(conn, query, params, types):
    statement = sql.SQL("copy ({}) to stdout (format csv, header true)").format(query)
    with conn.cursor().copy(statement, params) as copy:
        data = b"".join(copy)
    return _csv_table(data, types).num_rows


def way_psycopg_rows(conn, query, params, types):
    names = {pa.int64(): "int8", pa.float64(): "float8", pa.string(): "text"}
    statement = sql.SQL("copy ({}) to stdout (format binary)").format(query)
    with conn.cursor().copy(statement, params) as copy:
        copy.set_types([names[t] for t in types.values()])
        rows = list(copy.rows())
    return len(rows)


WAYS = {
    "adbc": way_adbc,
    "binary_array": way_binary_array,
    "csv_libpq": way_csv_libpq,
    "csv_psycopg": way_csv_psycopg,
    "psycopg_rows": way_psycopg_rows,
}


def shape_query(shape: str) -> tuple[sql.Composable, dict[str, pa.DataType]]:
    from mlpipe.demo import mixed, wide

    if shape == "wide":
        types = {"entity_id": pa.int64(), **{name: pa.float64() for name in wide.FEATURES}}
    else:
        types = {"entity_id": pa.string(), **{name: pa.string() for name in mixed.CATEGORIES}}
        types.update({name: pa.float64() for name in mixed.NUMERIC})
    columns = sql.SQL(", ").join(map(sql.Identifier, types))
    query = sql.SQL("select {} from {} where entity_id >= %(lo)s and entity_id < %(hi)s").format(
        columns, sql.Identifier("demo", shape)
    )
    return query, types


def measure(url: str, shape: str, way: str, ranges: list[tuple], threads: int, repeats: int) -> dict:
    """Median rows/s over the repeats of `threads` chunks read at once, and CPU s per wall s."""
    query, types = shape_query(shape)
    rates, cpu = [], []
    for _ in range(repeats):
        conns = [psycopg.connect(url, autocommit=True) for _ in range(threads)]
        counts = [0] * threads

        def read(i: int, conns=conns, counts=counts) -> None:
            lo, hi = ranges[i]
            counts[i] = WAYS[way](conns[i], query, {"lo": lo, "hi": hi}, types)

        workers = [threading.Thread(target=read, args=(i,)) for i in range(threads)]
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - wall_start
        cpu.append((time.process_time() - cpu_start) / wall)
        rates.append(sum(counts) / wall)
        for c in conns:
            c.close()
    return {"rows_per_s": round(statistics.median(rates)), "cpu_per_wall": round(statistics.median(cpu), 2)}


def key_ranges(url: str, shape: str, rows: int) -> list[tuple]:
    """The first two chunks of `rows` keys each, as [lo, hi) bounds."""
    with psycopg.connect(url) as conn:
        keys = [
            r[0]
            for r in conn.execute(
                sql.SQL("select entity_id from {} order by entity_id limit %s").format(
                    sql.Identifier("demo", shape)
                ),
                [2 * rows + 1],
            )
        ]
    return [(keys[0], keys[rows]), (keys[rows], keys[2 * rows])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows per chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from bench.common import scratch
    from mlpipe.db import connection
    from mlpipe.demo import mixed, wide

    _, url = scratch()
    with connection(url) as conn:
        wide.generate(conn, 2 * args.rows + 1, seed=args.seed)
        mixed.generate(conn, 2 * args.rows + 1, seed=args.seed)
    results = []
    print(f"{'shape':<8}{'way':<16}{'threads':>8}{'rows/s':>12}{'cpu/wall':>10}", flush=True)
    for shape in ("wide", "mixed"):
        ranges = key_ranges(url, shape, args.rows)
        for way in WAYS:
            if way == "binary_array" and shape == "mixed":
                continue  # numbers only, no NULLs: it cannot read this shape
            for threads in (1, 2):
                found = measure(url, shape, way, ranges, threads, args.repeats)
                results.append({"shape": shape, "way": way, "threads": threads, **found})
                print(
                    f"{shape:<8}{way:<16}{threads:>8}{found['rows_per_s']:>12,}{found['cpu_per_wall']:>10}",
                    flush=True,
                )
    summary = {}
    for shape in ("wide", "mixed"):
        rates = {r["way"]: r["rows_per_s"] for r in results if r["shape"] == shape and r["threads"] == 2}
        best_other = max(rate for way, rate in rates.items() if way != "adbc")
        summary[f"{shape}_adbc_vs_best_other_2_threads"] = round(rates["adbc"] / best_other, 2)
    print(json.dumps({"chunk_rows": args.rows, "repeats": args.repeats, **summary, "results": results}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
