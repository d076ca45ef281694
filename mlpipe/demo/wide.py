"""A wide numeric table for throughput benchmarks: 30 float features and a label, loaded by binary COPY."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql

from mlpipe.copyio import copy_in_binary

FEATURES = [f"f{i:02d}" for i in range(1, 31)]
BLOCK = 500_000
OBSERVED_DAYS_AGO = 30


def generate(
    conn: psycopg.Connection, rows: int, *, seed: int = 7, outcomes_observed_at: datetime | None = None
) -> None:
    """Replace demo.wide with `rows` entities; the label depends on a few features, non-linearly.
    demo.wide_outcomes holds the same labels as outcomes (key, outcome, observed_at), narrow and keyed as
    an outcomes feed would be: the monitor joins a day to it in key order. They count as observed at
    `outcomes_observed_at`, by default OBSERVED_DAYS_AGO days ago, so that a day scored the job's horizon
    (30 days) + 1 ago has matured with all of them (bench/monitor.py)."""
    observed_at = outcomes_observed_at or datetime.now(UTC) - timedelta(days=OBSERVED_DAYS_AGO)
    columns = sql.SQL(", ").join(
        sql.SQL("{} double precision not null").format(sql.Identifier(name)) for name in FEATURES
    )
    with conn.transaction():
        conn.execute("create schema if not exists demo")
        conn.execute("drop table if exists demo.wide")
        conn.execute(
            sql.SQL("create table demo.wide (entity_id bigint not null, {}, label integer not null)").format(
                columns
            )
        )
        copy_in_binary(conn, "copy demo.wide from stdin (format binary)", _blocks(rows, seed))
        conn.execute("alter table demo.wide add primary key (entity_id)")
        conn.execute("analyze demo.wide")
        conn.execute("drop table if exists demo.wide_outcomes")
        conn.execute(
            """create table demo.wide_outcomes as
               select entity_id, label as outcome, %s::timestamptz as observed_at
               from demo.wide order by entity_id""",
            [observed_at],
        )
        # The primary key is the index the monitor's merge join reads the outcomes in key order by.
        conn.execute("alter table demo.wide_outcomes add primary key (entity_id)")
        conn.execute("analyze demo.wide_outcomes")


def _blocks(rows: int, seed: int) -> Iterator[np.ndarray]:
    """The rows of demo.wide as binary COPY records, BLOCK at a time."""
    rng = np.random.default_rng(seed)
    layout = np.dtype(
        [("fields", ">i2"), ("key_len", ">i4"), ("key", ">i8")]
        + [item for name in FEATURES for item in ((f"{name}_len", ">i4"), (name, ">f8"))]
        + [("label_len", ">i4"), ("label", ">i4")]
    )
    for first in range(0, rows, BLOCK):
        n = min(BLOCK, rows - first)
        values = rng.normal(size=(n, len(FEATURES)))
        logit = (
            1.2 * values[:, 0] - 0.8 * values[:, 1] + 0.6 * values[:, 2] * values[:, 3] + np.sin(values[:, 4])
        )
        block = np.empty(n, dtype=layout)
        block["fields"] = len(FEATURES) + 2
        block["key_len"], block["key"] = 8, np.arange(first + 1, first + n + 1)
        for i, name in enumerate(FEATURES):
            block[f"{name}_len"], block[name] = 8, values[:, i]
        block["label_len"] = 4
        block["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
        yield block
