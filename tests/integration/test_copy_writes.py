"""The prediction writer (binary COPY) against a real server: what it writes is what PostgreSQL reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from psycopg import sql

from mlpipe.copyio import copy_predictions
from mlpipe.explain import ReasonWriter, reasons_sql

pytestmark = pytest.mark.integration


def _table(conn, key_type: str) -> None:
    conn.execute(
        sql.SQL(
            """create table mlpipe_data.written (entity_id {} primary key, score float8 not null,
                   decision bool not null, percentile float4 not null,
                   model_version text not null default 'default', reasons jsonb,
                   reason_codes smallint[])"""
        ).format(sql.SQL(key_type))  # one of two constants of this file
    )


def _written(conn, names: list[str]) -> list[tuple]:
    """The rows, reasons as the published view shows them (JSON built from the codes)."""
    return conn.execute(
        sql.SQL(
            "select entity_id, score, decision, percentile, model_version, {} from mlpipe_data.written "
            "order by entity_id"
        ).format(reasons_sql(names, 1))
    ).fetchall()


def test_integer_keys_with_reasons_and_a_model_version(conn):
    _table(conn, "bigint")
    reasons = ReasonWriter(["a", "b"], 1).encode(np.array([[0.25, 0.0], [0.0, -2.0]], dtype=np.float32))
    copy_predictions(
        conn,
        "mlpipe_data",
        "written",
        np.array([2**53 + 1, 7], dtype=np.int64),
        np.array([0.5, 0.125]),
        np.array([True, False]),
        np.array([50.0, 12.5], dtype=np.float32),
        model_version="churn-v9",
        reasons=reasons,
    )
    assert _written(conn, ["a", "b"]) == [
        (7, 0.125, False, 12.5, "churn-v9", [{"feature": "b", "contribution": -2.0}]),
        (2**53 + 1, 0.5, True, 50.0, "churn-v9", [{"feature": "a", "contribution": 0.25}]),
    ]


def test_text_keys_keep_the_default_version(conn):
    _table(conn, "text")
    reasons = ReasonWriter(["a"], 1).encode(np.array([[1.5], [0.0]], dtype=np.float32))
    copy_predictions(
        conn,
        "mlpipe_data",
        "written",
        np.array(["b-2", "a-1"], dtype=object),
        np.array([0.75, 0.0]),
        np.array([True, False]),
        np.array([90.0, 0.0], dtype=np.float32),
        reasons=reasons,
    )
    assert _written(conn, ["a"]) == [
        ("a-1", 0.0, False, 0.0, "default", [{"feature": "a", "contribution": 0.0}]),
        ("b-2", 0.75, True, 90.0, "default", [{"feature": "a", "contribution": 1.5}]),
    ]


def test_text_keys_of_any_width_with_a_version_and_reasons_in_one_binary_copy(conn):
    _table(conn, "text")
    keys = np.array(["", "é", "k" * 300, "cust-1", "a\tb\nc"], dtype=object)
    n = len(keys)
    reasons = ReasonWriter(["a", "b"], 1).encode(np.arange(2 * n, dtype=np.float32).reshape(n, 2) / 8)
    copy_predictions(
        conn,
        "mlpipe_data",
        "written",
        keys,
        np.linspace(0, 1, n),
        np.arange(n) % 2 == 0,
        np.arange(n, dtype=np.float32),
        model_version="mixed-v2",
        reasons=reasons,
    )
    written = {row[0]: row[1:] for row in _written(conn, ["a", "b"])}
    assert set(written) == set(keys)
    for i, key in enumerate(keys):
        assert written[key] == (
            np.linspace(0, 1, n)[i],
            i % 2 == 0,
            float(i),
            "mixed-v2",
            [{"feature": "b", "contribution": (2 * i + 1) / 8}],
        )


def test_nothing_to_write_writes_nothing(conn):
    _table(conn, "text")
    empty = np.array([], dtype=object)
    copy_predictions(
        conn, "mlpipe_data", "written", empty, np.array([]), np.array([], bool), np.array([], np.float32)
    )
    assert _written(conn, ["a"]) == []


def test_reasons_read_as_the_documented_json_and_older_days_as_stored(conn):
    _table(conn, "bigint")
    codes = ReasonWriter(["tenure_days", "plan", "f"], 3).encode(
        np.array([[0.5, -1.2, 0.0004]], dtype=np.float32)
    )
    copy_predictions(
        conn, "mlpipe_data", "written", np.array([1]), np.array([0.5]), np.array([True]),
        np.array([50.0], dtype=np.float32), reasons=codes,
    )  # fmt: skip
    conn.execute(
        """insert into mlpipe_data.written (entity_id, score, decision, percentile, reasons)
           values (2, 0.1, false, 10, '[{"feature": "plan", "contribution": 0.250}]'),
                  (3, 0.1, false, 10, null)"""
    )
    top = [
        '{"feature": "plan", "contribution": -1.200}',
        '{"feature": "tenure_days", "contribution": 0.500}',
        '{"feature": "f", "contribution": 0.000}',
    ]
    # The job's k now: 3 as written; 4 shows the 3 a row has; 2 the two largest of them.
    for k, shown in ((3, top), (4, top), (2, top[:2])):
        assert conn.execute(
            sql.SQL("select {}::text from mlpipe_data.written order by entity_id").format(
                reasons_sql(["tenure_days", "plan", "f"], k)
            )
        ).fetchall() == [
            ("[" + ", ".join(shown) + "]",),
            ('[{"feature": "plan", "contribution": 0.250}]',),
            (None,),
        ]


def test_the_migration_gives_older_prediction_tables_reason_codes(conn):
    conn.execute(
        "create table predictions.old_history (entity_id bigint, as_of date, reasons jsonb) "
        "partition by range (as_of)"
    )
    conn.execute(
        "create table mlpipe_data.old_r1 partition of predictions.old_history "
        "for values from ('2026-01-01') to ('2026-01-02')"
    )
    # A run table not attached yet (a crashed run to resume) gets it too.
    conn.execute("create table mlpipe_data.old_r2 (entity_id bigint, as_of date, reasons jsonb)")
    migration = Path(__file__).resolve().parents[2] / "sql" / "015_reason_codes.sql"
    for _ in range(2):  # safe to apply again
        conn.execute(migration.read_text())
    found = conn.execute(
        """select table_name, data_type from information_schema.columns
           where column_name = 'reason_codes' and table_name like 'old%' order by table_name"""
    ).fetchall()
    assert found == [("old_history", "ARRAY"), ("old_r1", "ARRAY"), ("old_r2", "ARRAY")]
