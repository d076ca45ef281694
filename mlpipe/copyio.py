"""Bulk I/O: query results out as Arrow tables (ADBC), predictions in as binary COPY."""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterable

import adbc_driver_manager
import adbc_driver_postgresql
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from adbc_driver_manager._reader import AdbcRecordBatchReader
from psycopg import sql

from mlpipe.db import conninfo_of

# PostgreSQL's binary COPY format: a signature, flags and header extension length (both 0), then the
# rows (each a field count, then each field's length and bytes), then a field count of -1.
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
BINARY_TRAILER = struct.pack(">h", -1)
_WRITE_BLOCK = 1 << 20
SMALLINT_OID = 21


def copy_out(
    conn: psycopg.Connection, query: sql.Composable, params: dict, types: dict[str, pa.DataType]
) -> pa.Table:
    """Run `query` and return its rows as an Arrow table of `types` (the columns the query returns,
    cast to these), read with ADBC's PostgreSQL driver: binary COPY decoded into Arrow in C, NULLs
    and text native, the GIL released while it reads.

    The rows come over a connection of their own to the same server, database and user as `conn`
    (opened for this call, ~10 ms), so the query sees committed data only; callers pass bounded
    queries (one key range per chunk)."""
    text = psycopg.ClientCursor(conn).mogrify(query, params)  # ADBC binds no named parameters
    try:
        reader = adbc_driver_manager.AdbcConnection(_database(conn))
        try:
            with adbc_driver_manager.AdbcStatement(reader) as statement:
                statement.set_sql_query(text)
                stream, _ = statement.execute_query()
                # The driver manager's reader, as its DB-API cursor uses: an error the server sends
                # mid-stream comes out as its typed error with the SQLSTATE (pyarrow's: OSError).
                table = AdbcRecordBatchReader._import_from_c(stream.address).read_all()
        finally:
            reader.close()
    except adbc_driver_manager.Error as exc:
        raise _as_psycopg_error(exc) from exc
    missing = [name for name in types if name not in table.column_names]
    if missing:
        raise psycopg.ProgrammingError(f"the query returns no column {', '.join(missing)}")
    return pa.table({name: table.column(name).cast(t) for name, t in types.items()})


# ADBC's database objects by connection string: one loads the server's type catalogue (~130 ms: its
# pg_type and pg_attribute) and holds no session, so it is kept; each read opens a connection of it
# (which does not query the catalogue again) and closes it.
_databases: dict[str, adbc_driver_manager.AdbcDatabase] = {}
_databases_lock = threading.Lock()


def preload_reader(conn: psycopg.Connection) -> None:
    """Load the type catalogue that `copy_out` reads with, for connections opened like `conn`, now
    (a run does it while its models load) rather than in its first chunk's read."""
    try:
        _database(conn)
    except adbc_driver_manager.Error as exc:
        raise _as_psycopg_error(exc) from exc


def _database(conn: psycopg.Connection) -> adbc_driver_manager.AdbcDatabase:
    dsn = conninfo_of(conn)
    with _databases_lock:
        if dsn not in _databases:
            _databases[dsn] = adbc_driver_postgresql.connect(dsn)
        return _databases[dsn]


def _as_psycopg_error(exc: adbc_driver_manager.Error) -> psycopg.Error:
    """The psycopg error of the server's SQLSTATE; a lost or refused connection is OperationalError."""
    state = getattr(exc, "sqlstate", None) or ""
    message = str(exc).split("ERROR:", 1)[-1].split(". SQLSTATE")[0].strip()
    if isinstance(exc, adbc_driver_manager.OperationalError) or state[:2] in ("08", "57", ""):
        return psycopg.OperationalError(message)
    return psycopg.errors.lookup(state)(message)


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
    """Binary COPY rows for (key, float8, bool, float4[, text][, smallint[][]]), no Python per row: a
    numpy record array when the key is an integer (every field fixed-width: the text is one constant,
    the reasons one (k, 2) array shape), else the rows' bytes, each text key between its length and
    the fixed-width fields."""
    fields = [
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
    head = [("fields", ">i2"), ("key_len", ">i4")]
    integer_key = keys.dtype.kind in "iu"
    rows = np.empty(len(keys), dtype=np.dtype(head + ([("key", ">i8")] if integer_key else []) + fields))
    rows["fields"] = 4 + (model_version is not None) + (reasons is not None)
    rows["score_len"], rows["score"] = 8, score
    rows["decision_len"], rows["decision"] = 1, decision
    rows["percentile_len"], rows["percentile"] = 4, percentile
    if model_version is not None:
        rows["version_len"], rows["version"] = len(version), version
    if reasons is not None:
        rows["reasons_len"] = sum(rows.dtype[f].itemsize for f in ("reasons_head", "reasons_dims", "reasons"))
        rows["reasons_head"], rows["reasons_dims"] = (2, 0, SMALLINT_OID), (reasons.shape[1], 1, 2, 1)
        rows["reasons"]["len"], rows["reasons"]["value"] = 2, reasons
    if integer_key:
        rows["key_len"], rows["key"] = 8, keys
        return rows
    return with_text_keys(rows, keys)


def with_text_keys(rows: np.ndarray, keys) -> np.ndarray:
    """Bytes of binary COPY rows whose first field is a text key. `rows` is a record array of the
    field count (">i2"), the key's length (">i4") and every other field (fixed-width); each key goes,
    as UTF-8, between its length and the rest. Arrow joins each row's three parts (head, key, rest)
    in C: ~3x faster than placing every byte by a numpy index (no Python per row either way)."""
    keys = pa.array(keys, type=pa.large_string()).cast(pa.large_binary())
    rows["key_len"] = pc.binary_length(keys).to_numpy(zero_copy_only=False)
    head = 6  # field count (2 bytes) and key length (4 bytes)
    fixed = rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
    joined = pc.binary_join_element_wise(
        _binary_rows(fixed[:, :head]), keys, _binary_rows(fixed[:, head:]), pa.scalar(b"", pa.large_binary())
    )
    offsets = np.frombuffer(
        joined.buffers()[1], dtype=np.int64, count=len(joined) + 1, offset=8 * joined.offset
    )
    return np.frombuffer(joined.buffers()[2] or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]


def _binary_rows(block: np.ndarray) -> pa.Array:
    """Each row of a (rows, width) uint8 block as one binary value (one copy of the block)."""
    block = np.ascontiguousarray(block)
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(block.shape[1]), len(block), [None, pa.py_buffer(block)]
    )
    return values.cast(pa.large_binary())


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
        keys = keys.astype(np.int64)
    rows = prediction_rows(keys, score, decision, percentile, model_version or None, reasons)
    copy_in_binary(conn, statement, [rows])


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
