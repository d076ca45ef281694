"""Bulk I/O with COPY: query results out as Arrow tables, predictions in as binary COPY."""

from __future__ import annotations

import io
import struct

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = struct.pack(">h", -1)
_WRITE_BLOCK = 1 << 20


def copy_out(
    conn: psycopg.Connection, query: sql.Composable, params: dict, types: dict[str, pa.DataType]
) -> pa.Table:
    """Run `query` through COPY ... TO STDOUT (CSV) and parse it with Arrow in C++, typed by `types`.

    Streams from the server into one buffer: memory follows the result size, so callers pass
    bounded queries (one key range per chunk)."""
    statement = sql.SQL("copy ({}) to stdout (format csv, header true)").format(query)
    buffer = io.BytesIO()
    with conn.cursor().copy(statement, params) as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
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


def copy_in_csv(conn: psycopg.Connection, schema: str, table: str, data: pa.Table) -> None:
    """Append an Arrow table with COPY FROM STDIN (CSV written by Arrow, no Python per row)."""
    buffer = io.BytesIO()
    pacsv.write_csv(data, buffer, pacsv.WriteOptions(include_header=False))
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in data.column_names)
    statement = sql.SQL("copy {}.{} ({}) from stdin (format csv)").format(
        sql.Identifier(schema), sql.Identifier(table), columns
    )
    _write_blocks(conn, statement, buffer.getbuffer())


def prediction_rows_binary(
    keys: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    percentile: np.ndarray,
    model_version: str | None = None,
) -> bytes:
    """Binary COPY payload for (bigint key, float8, bool, float4[, text]) rows, built as one numpy
    record array: every field is fixed-width (the text is one constant), so no Python runs per row."""
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
    rows = np.empty(len(keys), dtype=np.dtype(fields))
    rows["fields"] = 4 if model_version is None else 5
    rows["key_len"], rows["key"] = 8, keys
    rows["score_len"], rows["score"] = 8, score
    rows["decision_len"], rows["decision"] = 1, decision
    rows["percentile_len"], rows["percentile"] = 4, percentile
    if model_version is not None:
        rows["version_len"], rows["version"] = len(version), version
    return _BINARY_HEADER + rows.tobytes() + _BINARY_TRAILER


def copy_predictions(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    keys: np.ndarray,
    score: np.ndarray,
    decision: np.ndarray,
    percentile: np.ndarray,
    model_version: str | None = None,
) -> None:
    """Write scored rows into a run table with binary COPY; model_version, when given, overrides
    the table's default (the challenger's rows in a batch A/B run)."""
    columns = ["entity_id", "score", "decision", "percentile"] + (["model_version"] if model_version else [])
    statement = sql.SQL("copy {}.{} ({}) from stdin (format binary)").format(
        sql.Identifier(schema), sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    if keys.dtype.kind in "iu":
        payload = prediction_rows_binary(keys.astype(np.int64), score, decision, percentile, model_version)
        _write_blocks(conn, statement, memoryview(payload))
        return
    # Text keys are variable-width; psycopg's C row writer is the fast path for them.
    with conn.cursor().copy(statement) as copy:
        copy.set_types(["text", "float8", "bool", "float4"] + (["text"] if model_version else []))
        extra = [model_version] if model_version else []
        for row in zip(keys.tolist(), score.tolist(), decision.tolist(), percentile.tolist(), strict=True):
            copy.write_row([*row, *extra])


def _write_blocks(conn: psycopg.Connection, statement: sql.Composable, view: memoryview) -> None:
    with conn.cursor().copy(statement) as copy:
        for offset in range(0, len(view), _WRITE_BLOCK):
            copy.write(view[offset : offset + _WRITE_BLOCK])


# Fixed-width PostgreSQL types the binary fast path reads, by type OID: bigint and double precision.
FIXED_WIDTH_TYPES = {20: ">i8", 701: ">f8"}


def copy_out_fixed(
    conn: psycopg.Connection, query: sql.Composable, params: dict, layout: list[tuple[str, str]]
) -> dict[str, np.ndarray] | None:
    """Run `query` through binary COPY and read it as one numpy record array, when every column is
    fixed-width and no value is NULL (then each row has the same length). Returns None otherwise,
    and the caller reads the chunk the general way."""
    statement = sql.SQL("copy ({}) to stdout (format binary)").format(query)
    buffer = bytearray()
    with conn.cursor().copy(statement, params) as copy:
        for block in copy:
            buffer += block
    header, trailer = len(_BINARY_HEADER), 2
    if bytes(buffer[:header]) != _BINARY_HEADER:
        return None
    fields = [("fields", ">i2")]
    for i, (name, dtype) in enumerate(layout):
        fields += [(f"_len{i}", ">i4"), (name, dtype)]
    record = np.dtype(fields)
    body = memoryview(buffer)[header : len(buffer) - trailer]
    if len(body) % record.itemsize:
        return None
    rows = np.frombuffer(body, dtype=record)
    if len(rows) and (rows["fields"] != len(layout)).any():
        return None
    for i, (_, dtype) in enumerate(layout):
        if len(rows) and (rows[f"_len{i}"] != np.dtype(dtype).itemsize).any():
            return None  # a NULL (length -1) somewhere
    return {name: rows[name].astype(np.dtype(dtype).newbyteorder("=")) for name, dtype in layout}
