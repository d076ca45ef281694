"""Bulk I/O with COPY: query results out as Arrow tables, predictions in as binary COPY."""

from __future__ import annotations

import io
import select
import struct
from collections.abc import Iterable

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

# PostgreSQL's binary COPY format: a signature, flags and header extension length (both 0), then the
# rows (each a field count, then each field's length and bytes), then a field count of -1.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
BINARY_TRAILER = struct.pack(">h", -1)
_WRITE_BLOCK = 1 << 20
SMALLINT_OID = 21


def copy_out(
    conn: psycopg.Connection, query: sql.Composable, params: dict, types: dict[str, pa.DataType]
) -> pa.Table:
    """Run `query` through COPY ... TO STDOUT (CSV) and parse it with Arrow in C++, typed by `types`.

    Streams from the server into one buffer: memory follows the result size, so callers pass
    bounded queries (one key range per chunk)."""
    statement = sql.SQL("copy ({}) to stdout (format csv, header true)").format(query)
    buffer = io.BytesIO(copy_out_bytes(conn, statement, params))
    if buffer.getbuffer().nbytes == 0:
        return pa.table({name: pa.array([], type=t) for name, t in types.items()})
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(block_size=1 << 24),
        # A one-column result writes NULL as an empty line: it is a row, not nothing.
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            true_values=["t"],
            false_values=["f"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # PostgreSQL quotes an empty string, never a NULL
        ),
    )


def copy_out_bytes(conn: psycopg.Connection, statement: sql.Composable, params: dict) -> bytes:
    """Everything a COPY ... TO STDOUT statement sends, as one buffer.

    libpq hands COPY data over one row per message. psycopg's Copy iterator spends about 5 us of
    Python on each (a quarter of a core at our chunk sizes), so this loop talks to libpq directly:
    one call and one list append per row, waiting on the socket (GIL released) when no row is ready.
    COPY takes no server-side parameters; psycopg merges them client-side, as its Copy does."""
    query = psycopg.ClientCursor(conn).mogrify(statement, params).encode(conn.info.encoding)
    pgconn = conn.pgconn
    rows: list[memoryview] = []
    try:
        pgconn.send_query(query)
        result = _next_result(pgconn)
        if result is None or result.status != psycopg.pq.ExecStatus.COPY_OUT:
            error = _drain(conn, result) or psycopg.ProgrammingError("the statement is not a COPY TO STDOUT")
        else:
            while True:
                size, data = pgconn.get_copy_data(1)
                if size > 0:
                    rows.append(data)
                elif size == 0:
                    select.select([pgconn.socket], [], [])
                    pgconn.consume_input()
                elif size == -1:
                    break
                else:
                    raise psycopg.OperationalError(f"reading COPY data failed: {pgconn.get_error_message()}")
            error = _drain(conn, _next_result(pgconn))
    except BaseException:
        # Mid-COPY the connection cannot run anything else: close it rather than hand it back in a
        # state psycopg does not know about (a lost connection is closed already).
        conn.close()
        raise
    if error is not None:
        raise error  # an error the server reported; the connection is usable again (after rollback)
    return b"".join(rows)


def _next_result(pgconn):
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()
    return pgconn.get_result()


def _drain(conn: psycopg.Connection, result) -> psycopg.Error | None:
    """Read results to the end of the statement; return the first error, as psycopg would raise it."""
    error = None
    while result is not None:
        if error is None and result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        result = _next_result(conn.pgconn)
    return error


def copy_in_csv(conn: psycopg.Connection, schema: str, table: str, data: pa.Table) -> None:
    """Append an Arrow table with COPY FROM STDIN (CSV written by Arrow, no Python per row)."""
    buffer = io.BytesIO()
    pacsv.write_csv(data, buffer, pacsv.WriteOptions(include_header=False))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in data.column_names)
    statement = sql.SQL("copy {}.{} ({}) from stdin (format csv)").format(
        sql.Identifier(schema), sql.Identifier(table), columns
    )
    _write_blocks(conn, statement, buffer.getbuffer())


def prediction_rows(
    keys: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    percentile: np.ndarray,
    model_version: str | None = None,
    reasons: np.ndarray | None = None,
) -> np.ndarray:
    """Binary COPY rows for (bigint key, float8, bool, float4[, text][, smallint[][]]), as one numpy
    record array: every field is fixed-width (the text is one constant, the reasons one (k, 2) array
    shape), so no Python runs per row."""
    fields = [
        ("fields", ">i2"),
        ("key_len", ">i4"), ("key", ">i8"),
        ("score_len", ">i4"), ("score", ">f8"),
        ("decision_len", ">i4"), ("decision", "u1"),
        ("percentile_len", ">i4"), ("percentile", ">f4"),
    ]  # fmt: skip
    version = (model_version or "").encode()
    if model_version is not None:
        fields += [("version_len", ">i4"), ("version", f"S{len(version)}")]
    if reasons is not None:  # a binary array: dimensions, no-NULL flag, element type, (size, lower bound)s
        element = np.dtype([("len", ">i4"), ("value", ">i2")])
        fields += [("reasons_len", ">i4"), ("reasons_head", ">i4", 3), ("reasons_dims", ">i4", 4)]
        fields += [("reasons", element, reasons.shape[1:])]
    rows = np.empty(len(keys), dtype=np.dtype(fields))
    rows["fields"] = 4 + (model_version is not None) + (reasons is not None)
    rows["key_len"], rows["key"] = 8, keys
    rows["score_len"], rows["score"] = 8, score
    rows["decision_len"], rows["decision"] = 1, decision
    rows["percentile_len"], rows["percentile"] = 4, percentile
    if model_version is not None:
        rows["version_len"], rows["version"] = len(version), version
    if reasons is not None:
        rows["reasons_len"] = sum(rows.dtype[f].itemsize for f in ("reasons_head", "reasons_dims", "reasons"))
        rows["reasons_head"], rows["reasons_dims"] = (2, 0, SMALLINT_OID), (reasons.shape[1], 1, 2, 1)
        rows["reasons"]["len"], rows["reasons"]["value"] = 2, reasons
    return rows


def copy_predictions(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    keys: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    percentile: np.ndarray,
    model_version: str | None = None,
    reasons: np.ndarray | None = None,
) -> None:
    """Write scored rows into a run table with binary COPY; model_version, when given, overrides
    the table's default (the challenger's rows in a batch A/B run); reasons are (rows, k, 2) smallint
    codes from explain.ReasonWriter, written to the reason_codes column."""
    columns = ["entity_id", "score", "decision", "percentile"]
    columns += ["model_version"] if model_version else []
    columns += ["reason_codes"] if reasons is not None else []
    statement = sql.SQL("copy {}.{} ({}) from stdin (format binary)").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    if keys.dtype.kind in "iu":
        rows = prediction_rows(keys.astype(np.int64), score, decision, percentile, model_version, reasons)
        copy_in_binary(conn, statement, [rows])
        return
    # Text keys are variable-width; psycopg's C row writer is the fast path for them.
    with conn.cursor().copy(statement) as copy:
        types = ["text", "float8", "bool", "float4"] + (["text"] if model_version else [])
        copy.set_types(types + (["int2[]"] if reasons is not None else []))
        extra = [model_version] if model_version else []
        rows = zip(keys.tolist(), score.tolist(), decision.tolist(), percentile.tolist(), strict=True)
        if reasons is None:
            for row in rows:
                copy.write_row([*row, *extra])
            return
        for row, codes in zip(rows, reasons.tolist(), strict=True):
            copy.write_row([*row, *extra, codes])


def copy_in_binary(
    conn: psycopg.Connection, statement: sql.Composable | str, blocks: Iterable[np.ndarray]
) -> None:
    """Run a COPY ... FROM STDIN (format binary) whose rows are numpy record arrays laid out as binary
    COPY rows (big-endian, each field after its length): the header, every block, the trailer."""
    with conn.cursor().copy(statement) as copy:
        copy.write(BINARY_HEADER)
        for block in blocks:
            _write_view(copy, memoryview(np.ascontiguousarray(block)).cast("B"))
        copy.write(BINARY_TRAILER)


def _write_blocks(conn: psycopg.Connection, statement: sql.Composable, view: memoryview) -> None:
    with conn.cursor().copy(statement) as copy:
        _write_view(copy, view)


def _write_view(copy, view: memoryview) -> None:
    for offset in range(0, len(view), _WRITE_BLOCK):
        copy.write(view[offset : offset + _WRITE_BLOCK])


# Source types the numeric block path reads, by type OID: smallint, integer, bigint, double precision.
# Each converts to float8 exactly (bigint up to 2**53), as the CSV path's parse would.
NUMERIC_BLOCK_TYPES = {21, 23, 20, 701}


def read_numeric_block(
    conn: psycopg.Connection, query: sql.Composable, params: dict, key: str, columns: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Run `query` and fetch its rows as (int64 keys, float64 matrix of `columns`), gathered on the
    server into two arrays (the matrix as one two-dimensional array, row by row) and sent as one
    binary row: nothing runs per row on this side, so chunk tasks in threads do not fight over the
    GIL, and both sides together spend less CPU than streaming rows with COPY.
    Returns None when a value is NULL; the caller then reads the general way."""
    values = sql.SQL(", ").join(sql.SQL("source.{}::float8").format(sql.Identifier(c)) for c in columns)
    statement = sql.SQL(
        "select count(*), array_agg(source.{}::bigint), array_agg(array[{}]) from ({}) as source"
    ).format(sql.Identifier(key), values, query)
    # In a transaction (a savepoint when one is open) so that SET LOCAL applies on any connection.
    with conn.transaction(), conn.cursor(binary=True) as cursor:
        # Parallel workers would ship partial arrays between processes: slower for a chunk.
        cursor.execute("set local max_parallel_workers_per_gather = 0")
        cursor.execute(statement, params)
        rows, raw_keys, raw_matrix = (cursor.pgresult.get_value(0, i) for i in range(3))
    # The result is freed here: at most one raw copy and one converted copy live at a time.
    rows = int.from_bytes(rows, "big", signed=True)
    if rows == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, len(columns)), dtype=np.float64)
    keys = _array_elements(raw_keys, ">i8", (rows,))
    matrix = _array_elements(raw_matrix, ">f8", (rows, len(columns)))
    if keys is None or matrix is None:
        return None
    return keys.astype(np.int64), matrix.astype(np.float64)


def _array_elements(raw: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The elements of a binary array without NULLs, in `shape`. Layout: dimension count, has-NULL
    flag, element type, (length, lower bound) per dimension, then each element after its length."""
    dimensions, has_null = struct.unpack_from(">ii", raw)
    if has_null or dimensions != len(shape):
        return None
    header = 12 + 8 * dimensions
    if struct.unpack_from(f">{'ii' * dimensions}", raw, 12)[::2] != shape:
        return None
    elements = np.frombuffer(
        raw, dtype=np.dtype([("length", ">i4"), ("value", dtype)]), offset=header, count=int(np.prod(shape))
    )
    return elements["value"].reshape(shape)
