"""Reading query results in bulk (ADBC, binary COPY into Arrow) against a real server: types, NULLs,
text, nothing, and the error paths (an error the server reports is psycopg's, the reader recovers)."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from mlpipe.copyio import copy_out
from mlpipe.db import connection

pytestmark = pytest.mark.integration


def test_copy_out_reads_every_row_with_types_and_nulls(conn):
    query = sql.SQL(
        "select i as id, nullif(i %% 3, 0) * 0.5::numeric as half, 'k' || i as label, i %% 2 = 0 as even,"
        " nullif('é' || i, 'é7') as accent from generate_series(1, %(n)s) as i"
    )
    types = {"id": pa.int64(), "half": pa.float64(), "label": pa.string(), "even": pa.bool_()}
    table = copy_out(conn, query, {"n": 5000}, {**types, "accent": pa.string()})
    assert table.num_rows == 5000 and table.schema.types == [*types.values(), pa.string()]
    assert table.column("id").to_pylist()[-1] == 5000 and table.column("label").to_pylist()[0] == "k1"
    assert table.column("half").to_pylist()[:3] == [0.5, 1.0, None]
    assert table.column("even").to_pylist()[:2] == [False, True]
    assert table.column("accent").to_pylist()[5:8] == ["é6", None, "é8"]


def test_copy_out_of_nothing_is_an_empty_typed_table(conn):
    table = copy_out(conn, sql.SQL("select 1::bigint as id where false"), {}, {"id": pa.int64()})
    assert table.num_rows == 0 and table.schema.field("id").type == pa.int64()


def test_an_error_midway_is_psycopgs_and_both_connections_stay_usable(conn):
    failing = sql.SQL("select 1 / (i - 3000) as x from generate_series(1, 5000) as i")
    with pytest.raises(psycopg.errors.DivisionByZero):
        copy_out(conn, failing, {}, {"x": pa.int64()})
    assert conn.execute("select 41 + 1").fetchone()[0] == 42
    again = copy_out(conn, sql.SQL("select 42::int as x"), {}, {"x": pa.int64()})
    assert again.column("x").to_pylist() == [42]


def test_a_column_the_query_does_not_return_is_named(conn):
    with pytest.raises(psycopg.ProgrammingError, match="no column y"):
        copy_out(conn, sql.SQL("select 1 as x"), {}, {"x": pa.int64(), "y": pa.int64()})


def test_a_reader_that_cannot_connect_is_an_operational_error_and_a_retry_reads(conn, db_url):
    name = f"limited_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    conn.execute(sql.SQL("create role {} login connection limit 1").format(role))
    try:
        with connection(psycopg.conninfo.make_conninfo(db_url, user=name)) as limited:
            with pytest.raises(psycopg.OperationalError):  # what chunk tasks retry on
                copy_out(limited, sql.SQL("select 1 as x"), {}, {"x": pa.int64()})
            conn.execute(sql.SQL("alter role {} connection limit 2").format(role))
            table = copy_out(limited, sql.SQL("select 2 as x"), {}, {"x": pa.int64()})
            assert table.column("x").to_pylist() == [2]
    finally:
        conn.execute(sql.SQL("drop role {}").format(role))


def test_threads_read_at_once_each_its_own_rows(db_url):
    query = sql.SQL("select i as id from generate_series(%(lo)s, %(hi)s) as i")
    found = {}

    def read(lo: int) -> None:
        with connection(db_url) as conn:
            table = copy_out(conn, query, {"lo": lo, "hi": lo + 9999}, {"id": pa.int64()})
        found[lo] = table.column("id").to_pylist()

    threads = [threading.Thread(target=read, args=(lo,)) for lo in (1, 10001)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == {1: list(range(1, 10001)), 10001: list(range(10001, 20001))}
