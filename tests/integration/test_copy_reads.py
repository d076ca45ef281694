"""Reading query results in bulk: the libpq COPY loop and the numeric block, against a real server,
including the error paths (an error the server reports leaves the connection usable)."""

from __future__ import annotations

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from mlpipe.copyio import copy_out, read_numeric_block

pytestmark = pytest.mark.integration


def test_copy_out_reads_every_row_with_types(conn):
    query = sql.SQL("select i as id, i * 0.5 as half, 'k' || i as label from generate_series(1, %(n)s) as i")
    table = copy_out(conn, query, {"n": 5000}, {"id": pa.int64(), "half": pa.float64(), "label": pa.string()})
    assert table.num_rows == 5000
    assert table.column("id").to_pylist()[-1] == 5000 and table.column("label").to_pylist()[0] == "k1"


def test_copy_out_of_nothing_is_an_empty_typed_table(conn):
    table = copy_out(conn, sql.SQL("select 1::bigint as id where false"), {}, {"id": pa.int64()})
    assert table.num_rows == 0 and table.schema.field("id").type == pa.int64()


def test_an_error_midway_is_raised_and_the_connection_stays_usable(conn):
    failing = sql.SQL("select 1 / (i - 3000) as x from generate_series(1, 5000) as i")
    with pytest.raises(psycopg.errors.DivisionByZero):
        copy_out(conn, failing, {}, {"x": pa.int64()})
    assert not conn.closed
    assert conn.execute("select 41 + 1").fetchone()[0] == 42


def test_numeric_block_lines_up_rows_and_columns(conn):
    query = sql.SQL(
        "select i as id, i * 2 as doubled, i::float8 / 4 as quarter from generate_series(1, 1000) as i"
    )
    keys, values = read_numeric_block(conn, query, {}, "id", ["doubled", "quarter"])
    order = np.argsort(keys)
    assert keys[order].tolist() == list(range(1, 1001))
    assert np.array_equal(values[order][:, 0], 2.0 * np.arange(1, 1001))
    assert np.array_equal(values[order][:, 1], np.arange(1, 1001) / 4)


def test_numeric_block_with_a_null_or_nothing(conn):
    with_null = sql.SQL("select i as id, nullif(i, 7)::float8 as x from generate_series(1, 10) as i")
    assert read_numeric_block(conn, with_null, {}, "id", ["x"]) is None
    null_key = sql.SQL("select nullif(i, 7) as id, i::float8 as x from generate_series(1, 10) as i")
    assert read_numeric_block(conn, null_key, {}, "id", ["x"]) is None
    keys, values = read_numeric_block(
        conn, sql.SQL("select 1 as id, 2.0::float8 as x where false"), {}, "id", ["x"]
    )
    assert keys.shape == (0,) and values.shape == (0, 1)
