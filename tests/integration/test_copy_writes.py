"""The prediction writer (binary COPY) against a real server: what it writes is what PostgreSQL reads."""

from __future__ import annotations

import numpy as np
import pytest
from psycopg import sql

from mlpipe.copyio import copy_predictions
from mlpipe.explain import ReasonWriter

pytestmark = pytest.mark.integration


def _table(conn, key_type: str) -> None:
    conn.execute(
        sql.SQL(
            """create table mlpipe_data.written (entity_id {} primary key, score float8 not null,
                   decision bool not null, percentile float4 not null,
                   model_version text not null default 'default', reasons jsonb)"""
        ).format(sql.SQL(key_type))  # one of two constants of this file
    )


def _written(conn) -> list[tuple]:
    return conn.execute(
        "select entity_id, score, decision, percentile, model_version, reasons from mlpipe_data.written "
        "order by entity_id"
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
    assert _written(conn) == [
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
    assert _written(conn) == [
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
    written = {row[0]: row[1:] for row in _written(conn)}
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
    assert _written(conn) == []
