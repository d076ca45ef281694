"""Publishing: a run's table becomes the day's history partition and, for the newest day, the view.

Everything readers see changes in one short transaction. It waits at most lock_timeout for readers
(and makes new readers wait no longer than that), then backs off and tries again.
"""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta

import psycopg
from psycopg import errors, sql

from mlpipe.errors import PublishTimeoutError
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

DATA_SCHEMA = "mlpipe_data"
PUBLIC_SCHEMA = "predictions"
READER_ROLE = "mlpipe_reader"
_KEY_SQL_TYPES = {"bigint": sql.SQL("bigint"), "text": sql.SQL("text")}


def history_name(spec: JobSpec) -> str:
    return f"{spec.name}_history"


def run_table_name(spec: JobSpec, run_id: int) -> str:
    return f"{spec.name}_r{run_id}"


def _columns(spec: JobSpec) -> sql.Composed:
    return sql.SQL(
        "entity_id {key_type} not null, score double precision not null, decision boolean not null, "
        "percentile real not null, model_version text not null, as_of date not null, "
        "run_id bigint not null, reasons jsonb"
    ).format(key_type=_KEY_SQL_TYPES[spec.entity.type])


def ensure_history_table(conn: psycopg.Connection, spec: JobSpec) -> None:
    """predictions.<job>_history, partitioned by day; readers may select from it."""
    history = sql.Identifier(PUBLIC_SCHEMA, history_name(spec))
    conn.execute(
        sql.SQL(
            "create table if not exists {} ({}, primary key (entity_id, as_of)) partition by range (as_of)"
        ).format(history, _columns(spec))
    )
    conn.execute(sql.SQL("grant select on {} to {}").format(history, sql.Identifier(READER_ROLE)))


def create_run_table(
    conn: psycopg.Connection, spec: JobSpec, run_id: int, as_of: date, model_version: str
) -> str:
    """The run's own table. Constant columns come from defaults so COPY only sends what varies, and
    the check on as_of lets ATTACH PARTITION skip its validation scan at publish time."""
    name = run_table_name(spec, run_id)
    conn.execute(
        sql.SQL("create table {table} ({columns}, check (as_of = {as_of}))").format(
            table=sql.Identifier(DATA_SCHEMA, name), columns=_columns(spec), as_of=sql.Literal(as_of)
        )
    )
    for column, value in (("model_version", model_version), ("as_of", as_of), ("run_id", run_id)):
        conn.execute(
            sql.SQL("alter table {} alter column {} set default {}").format(
                sql.Identifier(DATA_SCHEMA, name), sql.Identifier(column), sql.Literal(value)
            )
        )
    return name


def index_run_table(conn: psycopg.Connection, table: str) -> None:
    """Build the key index after the load (faster than maintaining it row by row) and analyze."""
    target = sql.Identifier(DATA_SCHEMA, table)
    conn.execute(sql.SQL("alter table {} add primary key (entity_id, as_of)").format(target))
    conn.execute(sql.SQL("analyze {}").format(target))


def drop_run_table(conn: psycopg.Connection, table: str) -> None:
    conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(DATA_SCHEMA, table)))


def publish(
    conn: psycopg.Connection,
    spec: JobSpec,
    as_of: date,
    run_id: int,
    table: str,
    *,
    lock_timeout_ms: int,
    attempts: int,
) -> bool:
    """Swap the run's table in as the day's partition; move the view if the day is the newest.

    Returns whether the view moved. `conn` must not be in a transaction."""
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms"))
                )
                return _swap(conn, spec, as_of, run_id, table)
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            pause = min(0.05 * attempt, 1.0)
            log.info(
                "publish of %s %s waited for readers (attempt %d); retrying in %.2fs",
                spec.name,
                as_of,
                attempt,
                pause,
            )
            time.sleep(pause)
    raise PublishTimeoutError(
        f"could not publish {spec.name} for {as_of}: readers held locks through {attempts} attempts of "
        f"{lock_timeout_ms} ms. The previous predictions are still live; re-run the day when the long "
        "reader has finished (see pg_stat_activity)."
    )


def _swap(conn: psycopg.Connection, spec: JobSpec, as_of: date, run_id: int, table: str) -> bool:
    history = sql.Identifier(PUBLIC_SCHEMA, history_name(spec))
    row = conn.execute(
        "select table_name from mlpipe.partitions where job = %s and as_of = %s for update",
        [spec.name, as_of],
    ).fetchone()
    previous = row[0] if row else None
    newest = conn.execute("select max(as_of) from mlpipe.partitions where job = %s", [spec.name]).fetchone()[
        0
    ]
    if previous:
        conn.execute(
            sql.SQL("alter table {} detach partition {}").format(
                history, sql.Identifier(DATA_SCHEMA, previous)
            )
        )
    conn.execute(
        sql.SQL("alter table {} attach partition {} for values from ({}) to ({})").format(
            history,
            sql.Identifier(DATA_SCHEMA, table),
            sql.Literal(as_of),
            sql.Literal(as_of + timedelta(days=1)),
        )
    )
    moves_view = newest is None or as_of >= newest
    if moves_view:
        conn.execute(
            sql.SQL(
                "create or replace view {} as select entity_id, score, decision, percentile, model_version, "
                "as_of, run_id, reasons from {}"
            ).format(sql.Identifier(PUBLIC_SCHEMA, spec.name), sql.Identifier(DATA_SCHEMA, table))
        )
        conn.execute(
            sql.SQL("grant select on {} to {}").format(
                sql.Identifier(PUBLIC_SCHEMA, spec.name), sql.Identifier(READER_ROLE)
            )
        )
    if previous:
        drop_run_table(conn, previous)
    conn.execute(
        """insert into mlpipe.partitions (job, as_of, run_id, table_name) values (%s, %s, %s, %s)
           on conflict (job, as_of) do update
           set run_id = excluded.run_id, table_name = excluded.table_name, published_at = now()""",
        [spec.name, as_of, run_id, table],
    )
    conn.execute(
        "update mlpipe.runs set status = 'published', finished_at = now() where run_id = %s", [run_id]
    )
    return moves_view
