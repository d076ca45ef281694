"""A real-shaped table for throughput benchmarks: a text key, 4 categorical and 26 numeric features,
NULLs in 6 of them (1-15%), a few categories the model never saw, and a label."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from mlpipe.copyio import copy_in_csv

NUMERIC = [f"n{i:02d}" for i in range(1, 27)]
# Category counts: a region, a plan, a channel and a merchant (the wide one, ~1,000 values).
CATEGORIES = {
    "region": [f"r{i}" for i in range(6)],
    "plan": ["basic", "plus", "pro", "team", "enterprise"],
    "channel": [f"ch{i:02d}" for i in range(12)],
    "merchant": [f"m{i:04d}" for i in range(1000)],
}
# The share of NULLs in the numeric columns that have some.
NULL_SHARE = {"n03": 0.01, "n07": 0.03, "n11": 0.05, "n15": 0.08, "n19": 0.12, "n23": 0.15}
UNKNOWN_SHARE = 0.002  # merchants the job's spec does not list (a missing code to the model)
BLOCK = 500_000


def generate(conn: psycopg.Connection, rows: int, *, seed: int = 7) -> None:
    """Replace demo.mixed with `rows` entities; the label depends on numbers, categories and NULLs."""
    columns = [sql.SQL("entity_id text not null")]
    columns += [sql.SQL("{} text").format(sql.Identifier(name)) for name in CATEGORIES]
    columns += [sql.SQL("{} double precision").format(sql.Identifier(name)) for name in NUMERIC]
    with conn.transaction():
        conn.execute("create schema if not exists demo")
        conn.execute("drop table if exists demo.mixed")
        conn.execute(
            sql.SQL("create table demo.mixed ({}, label integer not null)").format(
                sql.SQL(", ").join(columns)
            )
        )
        for block in _blocks(rows, seed):
            copy_in_csv(conn, "demo", "mixed", block)
        conn.execute("alter table demo.mixed add primary key (entity_id)")
        conn.execute("analyze demo.mixed")


def _blocks(rows: int, seed: int) -> Iterator[pa.Table]:
    rng = np.random.default_rng(seed)
    merchant_effect = rng.normal(scale=0.8, size=len(CATEGORIES["merchant"]))
    for first in range(0, rows, BLOCK):
        n = min(BLOCK, rows - first)
        values = rng.normal(size=(n, len(NUMERIC)))
        codes = {name: rng.integers(0, len(cats), size=n) for name, cats in CATEGORIES.items()}
        missing = {name: rng.random(n) < share for name, share in NULL_SHARE.items()}
        logit = (
            1.2 * values[:, 0]
            - 0.8 * values[:, 1]
            + 0.6 * values[:, 2] * values[:, 3]
            + merchant_effect[codes["merchant"]]
            + 0.5 * (codes["plan"] >= 3)
            + 0.7 * missing["n19"]
        )
        data = {"entity_id": pa.array(np.char.add("cust-", np.arange(first + 1, first + n + 1).astype("U9")))}
        for name, cats in CATEGORIES.items():
            data[name] = np.asarray(cats, dtype=object)[codes[name]]
        unknown = rng.random(n) < UNKNOWN_SHARE
        data["merchant"][unknown] = "m-new"
        for i, name in enumerate(NUMERIC):
            data[name] = pa.array(values[:, i], mask=missing.get(name))
        data["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)
        yield pa.table(data)
