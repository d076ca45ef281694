"""Publishing: a run's table becomes the day's history partition and, for the newest day, the live one.

predictions.<job> is a view that is created once and never replaced: it reads mlpipe_data.<job>_live,
an inheritance parent whose children are day tables, filtered on the table mlpipe.live_views names.
Publishing moves that pointer row and makes the new table a child of <job>_live and of <job>_history
(inheritance, not declarative partitions: a table can have two parents, and ALTER TABLE INHERIT takes
only SHARE UPDATE EXCLUSIVE on a parent). Readers hold ACCESS SHARE, which conflicts with neither, so
a publish never waits for them, even behind a long reader, and they never wait for it. The table that
stops being live leaves <job>_live afterwards, when no reader holds it (NOWAIT: never queued ahead of
readers), at the next publish: a lookup that took its snapshot before the pointer moved but looks up
the children after may still find the table its snapshot names. A table the re-run of a day replaced
stays a child of <job>_live until then too, and is dropped then. Replacing a table (re-running a day,
retention) needs it exclusively: that waits, with NOWAIT and retries, only for readers of that table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date
from typing import Literal, TypeVar

import psycopg
from psycopg import errors, sql

from mlpipe import explain, fallback, runs
from mlpipe.errors import PublishTimeoutError, UsageError
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

DATA_SCHEMA = "mlpipe_data"
PUBLIC_SCHEMA = "predictions"
READER_ROLE = "mlpipe_reader"
ANALYST_ROLE = "mlpipe_analyst"
WRITER_ROLE = "mlpipe_writer"
_KEY_SQL_TYPES = {"bigint": sql.SQL("bigint"), "text": sql.SQL("text")}
Kind = Literal["published", "shadow"]
# What every published row carries, in the view's order: the one list the view, the lookup function
# and the top-up's insert follow.
VIEW_COLUMNS = ("entity_id", "score", "decision", "percentile", "model_version", "as_of", "run_id", "reasons")
T = TypeVar("T")


def history_name(spec: JobSpec) -> str:
    return f"{spec.name}_history"


def shadow_name(spec: JobSpec) -> str:
    return f"{spec.name}_shadow"


def live_name(spec: JobSpec) -> str:
    """mlpipe_data.<job>_live: the parent predictions.<job> reads; its children are day tables."""
    return f"{spec.name}_live"


# One row for any key: the published row first, else the entity's segment's rate, else the base rate.
# UNION ALL under LIMIT 1: Append runs its branches in order (the function is parallel unsafe, so the
# plan is never a parallel append), so a scored key costs one index lookup and the fallback branch is
# not even started; an unknown key adds a scan of a few rows. The planner inlines the function (plain
# SQL, stable, not security definer): it costs what a lookup through the view costs.
_BODY = """
(
    select {published_columns}, 'model'::text as source
    from {view} as published
    where published.entity_id = $1
)
union all
(
    select $1, fallback.score, fallback.decision, fallback.percentile, fallback.model_version,
           fallback.as_of, null::bigint, null::jsonb, 'fallback'::text
    from {fallback} as fallback
    where fallback.segment is null or fallback.segment = $2
    order by fallback.segment is null
    limit 1
)
limit 1
"""


def fallback_name(spec: JobSpec) -> str:
    return f"{spec.name}_fallback"


def function_name(spec: JobSpec) -> str:
    """predictions.<job>_for: one row for any key (the published one, or a fallback)."""
    return f"{spec.name}_for"


def _ensure_fallback_table(conn: psycopg.Connection, spec: JobSpec) -> None:
    """predictions.<job>_fallback, the writer's, readable by readers (the function reads it as them)."""
    table = sql.Identifier(PUBLIC_SCHEMA, fallback_name(spec))
    if conn.execute("select to_regclass(%s)", [table.as_string(conn)]).fetchone()[0] is not None:
        return
    conn.execute(
        sql.SQL(
            "create table if not exists {} (segment text, score double precision not null, "
            "decision boolean not null, percentile real not null, model_version text not null, "
            "as_of date not null, n bigint)"
        ).format(table)
    )
    _hand_to_writer(conn, "table", table)
    conn.execute(sql.SQL("grant select on {} to {}").format(table, sql.Identifier(READER_ROLE)))


def ensure_function(conn: psycopg.Connection, spec: JobSpec) -> None:
    """Create predictions.<job>_for(key, segment) once the view exists: EXECUTE for readers only."""
    key_type = _KEY_SQL_TYPES[spec.entity.type]
    signature = (
        sql.SQL("{}({}, text)")
        .format(sql.Identifier(PUBLIC_SCHEMA, function_name(spec)), key_type)
        .as_string(conn)
    )
    view = sql.Identifier(PUBLIC_SCHEMA, spec.name)
    found = conn.execute(
        "select to_regprocedure(%s), to_regclass(%s)", [signature, view.as_string(conn)]
    ).fetchone()
    if found[0] is not None or found[1] is None:
        return
    function = sql.Identifier(PUBLIC_SCHEMA, function_name(spec))
    body = sql.SQL(_BODY).format(
        view=view,
        fallback=sql.Identifier(PUBLIC_SCHEMA, fallback_name(spec)),
        published_columns=sql.SQL(", ").join(sql.Identifier("published", c) for c in VIEW_COLUMNS),
    )
    conn.execute(
        sql.SQL(
            "create function {function}(key {key_type}, segment text default null) "
            "returns table (entity_id {key_type}, score double precision, decision boolean, "
            "percentile real, model_version text, as_of date, run_id bigint, reasons jsonb, source text) "
            "language sql stable parallel unsafe as {body}"
        ).format(function=function, key_type=key_type, body=sql.Literal(body.as_string(conn)))
    )
    arguments = sql.SQL("{}({}, text)").format(function, key_type)
    conn.execute(sql.SQL("alter function {} owner to {}").format(arguments, sql.Identifier(WRITER_ROLE)))
    # Functions are executable by PUBLIC by default: only readers (and analysts, their members) may.
    conn.execute(sql.SQL("revoke all on function {} from public").format(arguments))
    conn.execute(sql.SQL("grant execute on function {} to {}").format(arguments, sql.Identifier(READER_ROLE)))


def _refresh_fallback(conn: psycopg.Connection, spec: JobSpec, as_of: date, run_id: int) -> None:
    """Inside the transaction that moves the view: the live run's model's rates as the fallback rows."""
    # Two transactions moving one job's view would both replace the rows: one at a time.
    conn.execute("select pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"mlpipe.fallback:{spec.name}"])
    table = sql.Identifier(PUBLIC_SCHEMA, fallback_name(spec))
    model = conn.execute(
        """select m.model_version, m.reference - 'explainer' - 'histograms' from mlpipe.runs r
           join mlpipe.models m using (model_id) where r.run_id = %s""",
        [run_id],
    ).fetchone()
    conn.execute(sql.SQL("delete from {}").format(table))
    if model is None:  # a run with no registered model (benchmarks): no fallback to offer
        log.warning("run %s of %s has no registered model: no fallback rows", run_id, spec.name)
        return
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL(
                "insert into {} (segment, score, decision, percentile, model_version, as_of, n) "
                "values (%s, %s, %s, %s, %s, %s, %s)"
            ).format(table),
            fallback.answer_rows(spec, model[0], model[1], as_of),
        )


def run_table_name(spec: JobSpec, run_id: int, kind: Kind = "published") -> str:
    return f"{spec.name}_{'r' if kind == 'published' else 's'}{run_id}"


def _columns(spec: JobSpec) -> sql.Composed:
    return sql.SQL(
        "entity_id {key_type} not null, score double precision not null, decision boolean not null, "
        "percentile real not null, model_version text not null, as_of date not null, "
        "run_id bigint not null, reasons jsonb, reason_codes smallint[]"
    ).format(key_type=_KEY_SQL_TYPES[spec.entity.type])


def ensure_job_tables(conn: psycopg.Connection, spec: JobSpec) -> None:
    """predictions.<job>_history (readers may select it), <job>_fallback and <job>_for (readers), and,
    when the job shadows a challenger, predictions.<job>_shadow (analysts only: frontends never read
    a challenger)."""
    tables = [(PUBLIC_SCHEMA, history_name(spec), READER_ROLE), (DATA_SCHEMA, live_name(spec), None)]
    if spec.outputs.shadow:
        tables.append((PUBLIC_SCHEMA, shadow_name(spec), ANALYST_ROLE))
    for schema, name, role in tables:
        table = sql.Identifier(schema, name)
        if conn.execute("select to_regclass(%s)", [table.as_string(conn)]).fetchone()[0] is None:
            # An inheritance parent, partitioned by as_of through its children's checks (constraint
            # exclusion prunes them); its own rows are refused, they belong in the day tables.
            conn.execute(
                sql.SQL(
                    "create table if not exists {} ({}, constraint rows_live_in_day_tables check (false) "
                    "no inherit)"
                ).format(table, _columns(spec))
            )
            # Only when new: changing the owner locks out readers, and an existing one is the writer's.
            _hand_to_writer(conn, "table", table)
        if role is None:
            continue
        if role == ANALYST_ROLE:  # default privileges granted it to readers too: take that back
            conn.execute(sql.SQL("revoke all on {} from {}").format(table, sql.Identifier(READER_ROLE)))
        conn.execute(sql.SQL("grant select on {} to {}").format(table, sql.Identifier(role)))
    _ensure_fallback_table(conn, spec)
    ensure_function(conn, spec)  # a job published before the function existed gets it now


def _hand_to_writer(conn: psycopg.Connection, kind: Literal["table", "view"], name: sql.Identifier) -> None:
    """Make mlpipe_writer own a new object: attaching partitions and replacing the view need its owner,
    so any login in mlpipe_writer (or an administrator) can publish the next day."""
    conn.execute(sql.SQL("alter {} {} owner to {}").format(sql.SQL(kind), name, sql.Identifier(WRITER_ROLE)))


def create_run_table(
    conn: psycopg.Connection,
    spec: JobSpec,
    run_id: int,
    as_of: date,
    model_version: str,
    kind: Kind = "published",
) -> str:
    """The run's own table. Constant columns come from defaults so COPY only sends what varies, and
    the check on as_of lets queries on history skip the other days (constraint exclusion). The key
    index exists from the start: each chunk's COPY maintains its part while other chunks compute,
    instead of one build after the last chunk, on the run's critical path (measured at 1M mixed rows:
    a build after the load took 1.5-1.8 s there, and the chunks' time it saved was within the noise).
    Autovacuum
    stays off: the table is written once and analyzed by the run, and an autovacuum worker on it would
    hold the lock that INHERIT needs, stalling publish for seconds (anti-wraparound vacuums still run)."""
    name = run_table_name(spec, run_id, kind)
    target = sql.Identifier(DATA_SCHEMA, name)
    conn.execute(
        sql.SQL(
            "create table {table} ({columns}, primary key (entity_id, as_of), check (as_of = {as_of})) "
            "with (autovacuum_enabled = off)"
        ).format(table=target, columns=_columns(spec), as_of=sql.Literal(as_of))
    )
    _hand_to_writer(conn, "table", target)
    for column, value in (("model_version", model_version), ("as_of", as_of), ("run_id", run_id)):
        conn.execute(
            sql.SQL("alter table {} alter column {} set default {}").format(
                target, sql.Identifier(column), sql.Literal(value)
            )
        )
    return name


def index_run_table(conn: psycopg.Connection, table: str) -> None:
    """Analyze the loaded table; add the key index if it has none (a crashed run's table from a
    release that built it after the load, resumed now)."""
    target = sql.Identifier(DATA_SCHEMA, table)
    indexed = conn.execute(
        """select exists (select from pg_constraint c join pg_class t on t.oid = c.conrelid
                          join pg_namespace n on n.oid = t.relnamespace
                          where n.nspname = %s and t.relname = %s and c.contype = 'p')""",
        [DATA_SCHEMA, table],
    ).fetchone()[0]
    with conn.transaction():
        if not indexed:
            # The default 64MB makes a 10M-row sort spill to disk; this is the server's memory, for seconds.
            conn.execute("set local maintenance_work_mem = '512MB'")
            conn.execute(sql.SQL("alter table {} add primary key (entity_id, as_of)").format(target))
        # Lookups need only the unique index; the statistics serve analysts' queries on history, for
        # which a 3,000-row sample does (the default 30,000 reads every page of a 1M-row table).
        conn.execute("set local default_statistics_target = 10")
        conn.execute(sql.SQL("analyze {}").format(target))


def drop_run_table(conn: psycopg.Connection, table: str | None) -> None:
    if table is not None:
        conn.execute(sql.SQL("drop table if exists {}").format(sql.Identifier(DATA_SCHEMA, table)))


def run_table_exists(conn: psycopg.Connection, table: str) -> bool:
    """Whether a run's table is still there (a crashed run's, before it is resumed or dropped)."""
    found = conn.execute("select to_regclass(%s)", [f"{DATA_SCHEMA}.{table}"]).fetchone()[0]
    return found is not None


def newest_published_day(conn: psycopg.Connection, spec: JobSpec) -> date | None:
    return conn.execute(
        "select max(as_of) from mlpipe.partitions where job = %s and kind = 'published'", [spec.name]
    ).fetchone()[0]


def view_shows(conn: psycopg.Connection, spec: JobSpec, run_id: int) -> bool:
    """Whether predictions.<job> shows this run's day."""
    live = conn.execute("select run_id from mlpipe.live_views where job = %s", [spec.name]).fetchone()
    return live is not None and live[0] == run_id


def _retrying(
    conn: psycopg.Connection, what: str, lock_timeout_ms: int, attempts: int, action: Callable[[], T]
) -> T:
    """Run `action` in one transaction that waits at most lock_timeout for locks; back off, retry."""
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{lock_timeout_ms}ms"))
                )
                return action()
        except (errors.LockNotAvailable, errors.DeadlockDetected):
            pause = min(0.05 * attempt, 1.0)
            log.info("%s waited for readers (attempt %d); retrying in %.2fs", what, attempt, pause)
            time.sleep(pause)
    raise PublishTimeoutError(
        f"could not {what}: readers held locks through {attempts} attempts of {lock_timeout_ms} ms. "
        "The previous predictions are still live; try again when the long reader has finished "
        "(see pg_stat_activity)."
    )


def publish(
    conn: psycopg.Connection,
    spec: JobSpec,
    as_of: date,
    run_id: int,
    table: str,
    *,
    lock_timeout_ms: int,
    attempts: int,
    shadow_table: str | None = None,
) -> bool:
    """Swap the run's table in as the day's partition (and its shadow table, if any); make it the live
    one if the day is the newest. Returns whether the view moved. `conn` must not be in a transaction."""

    def swap() -> bool:
        if shadow_table:
            drop_run_table(conn, _attach(conn, spec, as_of, run_id, shadow_table, "shadow"))
        newest, live = conn.execute(
            """select (select max(as_of) from mlpipe.partitions where job = %(job)s and kind = 'published'),
                      (select as_of from mlpipe.live_views where job = %(job)s)""",
            {"job": spec.name},
        ).fetchone()
        # The newest day moves the view; so does re-running the day a rollback pointed it back to.
        moves_view = newest is None or as_of >= newest or as_of == live
        replaced = _attach(conn, spec, as_of, run_id, table, "published")
        runs.mark_published(conn, run_id)
        if moves_view:
            _point_view(conn, spec, as_of, run_id, table, f"published run {run_id}")
        if replaced and not _is_live_child(conn, spec, replaced):
            drop_run_table(conn, replaced)  # _attach holds it exclusively already; no reader can reach it
        return moves_view

    retire_live_tables(conn, spec)  # what the previous publish left behind, before this one moves on
    return _retrying(conn, f"publish {spec.name} for {as_of}", lock_timeout_ms, attempts, swap)


def insert_into_day(
    conn: psycopg.Connection,
    spec: JobSpec,
    as_of: date,
    run_id: int,
    table: str,
    *,
    lock_timeout_ms: int,
    attempts: int,
    drop: tuple[str, ...] = (),
) -> int:
    """A top-up: the run's rows into the day's published partition in one transaction, rows only (no
    DDL on anything readers touch: they never wait); then its own tables (`drop`) go. Returns the
    rows inserted; an entity the day has by then keeps its row."""
    columns = sql.SQL(", ").join(map(sql.Identifier, (*VIEW_COLUMNS, "reason_codes")))

    def insert() -> int:
        row = conn.execute(
            """select table_name from mlpipe.partitions where job = %s and kind = 'published' and as_of = %s
               for share""",
            [spec.name, as_of],
        ).fetchone()
        if row is None:
            raise UsageError(
                f"the {as_of} day of {spec.name} is no longer in history; nothing was inserted: "
                f"top up again (`mlpipe score --job {spec.name} --new-only`)"
            )
        inserted = conn.execute(
            sql.SQL(
                "insert into {day} ({columns}) select {columns} from {run} "
                "on conflict (entity_id, as_of) do nothing"
            ).format(
                day=sql.Identifier(DATA_SCHEMA, row[0]),
                columns=columns,
                run=sql.Identifier(DATA_SCHEMA, table),
            )
        ).rowcount
        runs.mark_published(conn, run_id)
        for name in (table, *drop):
            drop_run_table(conn, name)
        return inserted

    return _retrying(conn, f"top up {spec.name} for {as_of}", lock_timeout_ms, attempts, insert)


def _lock_nowait(conn: psycopg.Connection, table: str) -> None:
    """Take a day table exclusively or fail at once (LockNotAvailable): a request that waited would
    queue every new reader of that table behind it."""
    conn.execute(
        sql.SQL("lock table {} in access exclusive mode nowait").format(sql.Identifier(DATA_SCHEMA, table))
    )


def _attach(
    conn: psycopg.Connection, spec: JobSpec, as_of: date, run_id: int, table: str, kind: Kind
) -> str | None:
    """Make `table` the day's child of history (or shadow). Returns the table it replaced, no longer a
    child of history and held exclusively, for the caller to drop once nothing points at it."""
    parent = sql.Identifier(PUBLIC_SCHEMA, history_name(spec) if kind == "published" else shadow_name(spec))
    row = conn.execute(
        "select table_name from mlpipe.partitions where job = %s and kind = %s and as_of = %s for update",
        [spec.name, kind, as_of],
    ).fetchone()
    if row:
        _lock_nowait(conn, row[0])
        conn.execute(
            sql.SQL("alter table {} no inherit {}").format(sql.Identifier(DATA_SCHEMA, row[0]), parent)
        )
    conn.execute(sql.SQL("alter table {} inherit {}").format(sql.Identifier(DATA_SCHEMA, table), parent))
    conn.execute(
        """insert into mlpipe.partitions (job, kind, as_of, run_id, table_name) values (%s, %s, %s, %s, %s)
           on conflict (job, kind, as_of) do update
           set run_id = excluded.run_id, table_name = excluded.table_name, published_at = now()""",
        [spec.name, kind, as_of, run_id, table],
    )
    return row[0] if row else None


def _ensure_reasons(conn: psycopg.Connection, spec: JobSpec) -> sql.Composable:
    """The view's `reasons` column: mlpipe_data.<job>_reasons(reason_codes, reasons), a PL/pgSQL
    function around explain.reasons_sql, (re)defined when the job's feature list or its number of
    reasons changes. The same expression written into the view costs a lookup by key twice its
    planning time (about 5 microseconds per reason item, every time); behind a function it is
    planned once per session, and an ad-hoc lookup costs about a fifth less (bench/lookup.py). A
    full scan of the view pays about 3 microseconds per row for the call."""
    names = explain.job_reason_names(spec)
    k = min(spec.outputs.reasons, len(names))
    if k == 0:
        return sql.Identifier("reasons")  # a job without reasons: the (empty) stored column
    function = sql.Identifier(DATA_SCHEMA, f"{spec.name}_reasons")
    body = f"begin return {explain.reasons_sql(names, k).as_string(conn)}; end"
    current = conn.execute(
        "select prosrc from pg_proc where oid = to_regprocedure(%s)",
        [sql.SQL("{}(smallint[], jsonb)").format(function).as_string(conn)],
    ).fetchone()
    if current is None or current[0] != body:
        conn.execute(
            sql.SQL(
                "create or replace function {}(reason_codes smallint[], reasons jsonb) returns jsonb "
                "language plpgsql immutable parallel safe as {}"
            ).format(function, sql.Literal(body))
        )
        conn.execute(
            sql.SQL("alter function {}(smallint[], jsonb) owner to {}").format(
                function, sql.Identifier(WRITER_ROLE)
            )
        )
    return sql.SQL("{}(live.reason_codes, live.reasons)").format(function)


def _ensure_view(conn: psycopg.Connection, spec: JobSpec) -> None:
    """predictions.<job> over <job>_live, created once and replaced only when how it builds `reasons`
    changes (a release that changed it; a job that started or stopped keeping reasons): a publish
    otherwise never touches it. That part of the definition is kept in the view's comment."""
    view = sql.Identifier(PUBLIC_SCHEMA, spec.name)
    live = sql.Identifier(DATA_SCHEMA, live_name(spec))
    reasons = _ensure_reasons(conn, spec)
    signature = f"mlpipe reasons: {reasons.as_string(conn)}"
    current = conn.execute(
        """select obj_description(to_regclass(%(view)s), 'pg_class'),
                  exists (select from pg_depend d join pg_rewrite r on r.oid = d.objid
                          where r.ev_class = to_regclass(%(view)s) and d.refobjid = to_regclass(%(live)s))""",
        {"view": view.as_string(conn), "live": live.as_string(conn)},
    ).fetchone()
    if current == (signature, True):
        return
    columns = [sql.Identifier("live", c) for c in VIEW_COLUMNS if c != "reasons"]
    # The pointer is read once per lookup (an InitPlan); a child it does not name is filtered out.
    conn.execute(
        sql.SQL(
            "create or replace view {view} as select {columns}, {reasons} as reasons from {live} as live "
            "where live.tableoid = (select v.live_table from mlpipe.live_views as v where v.job = {job})"
        ).format(
            view=view,
            columns=sql.SQL(", ").join(columns),
            reasons=reasons,
            live=live,
            job=sql.Literal(spec.name),
        )
    )
    conn.execute(sql.SQL("comment on view {} is {}").format(view, sql.Literal(signature)))
    _hand_to_writer(conn, "view", view)
    conn.execute(sql.SQL("grant select on {} to {}").format(view, sql.Identifier(READER_ROLE)))


def _point_view(
    conn: psycopg.Connection, spec: JobSpec, as_of: date, run_id: int, table: str, reason: str
) -> None:
    """Make `table` the live day: a child of <job>_live, and the one the pointer names (rows only)."""
    _refresh_fallback(conn, spec, as_of, run_id)  # rows only: readers of the function never wait
    _ensure_view(conn, spec)
    live, target = sql.Identifier(DATA_SCHEMA, live_name(spec)), sql.Identifier(DATA_SCHEMA, table)
    child = conn.execute(
        """select exists (select from pg_inherits
                          where inhrelid = to_regclass(%s) and inhparent = to_regclass(%s))""",
        [target.as_string(conn), live.as_string(conn)],
    ).fetchone()[0]
    if not child:  # a rollback may point back at a table that has not left yet
        conn.execute(sql.SQL("alter table {} inherit {}").format(target, live))
    ensure_function(conn, spec)  # the first publish: its body needs the view
    conn.execute(
        """insert into mlpipe.live_views (job, as_of, run_id, reason, live_table)
           values (%s, %s, %s, %s, to_regclass(%s))
           on conflict (job) do update set as_of = excluded.as_of, run_id = excluded.run_id,
               reason = excluded.reason, live_table = excluded.live_table, changed_at = now()""",
        [spec.name, as_of, run_id, reason, target.as_string(conn)],
    )


def _is_live_child(conn: psycopg.Connection, spec: JobSpec, table: str) -> bool:
    return conn.execute(
        """select exists (select from pg_inherits
                          where inhrelid = to_regclass(%s) and inhparent = to_regclass(%s))""",
        [
            sql.Identifier(DATA_SCHEMA, table).as_string(conn),
            sql.Identifier(DATA_SCHEMA, live_name(spec)).as_string(conn),
        ],
    ).fetchone()[0]


def retire_live_tables(conn: psycopg.Connection, spec: JobSpec) -> int:
    """Children of <job>_live that the pointer no longer names leave it (and are dropped if no day
    holds them any more: a re-run replaced them), each in its own transaction, unless a reader still
    holds one (NOWAIT: it stays, hidden by the pointer, until the next publish). Called before a
    publish moves the pointer, so the table live until then stays a child for a day. Returns how
    many are left behind."""
    live = sql.Identifier(DATA_SCHEMA, live_name(spec))
    stale = conn.execute(
        """select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
           where i.inhparent = to_regclass(%s)
             and i.inhrelid is distinct from (select live_table from mlpipe.live_views where job = %s)""",
        [live.as_string(conn), spec.name],
    ).fetchall()
    left = 0
    for (name,) in stale:
        try:
            with conn.transaction():
                _lock_nowait(conn, name)
                conn.execute(
                    sql.SQL("alter table {} no inherit {}").format(sql.Identifier(DATA_SCHEMA, name), live)
                )
                in_history = conn.execute(
                    "select exists (select from mlpipe.partitions where job = %s and table_name = %s)",
                    [spec.name, name],
                ).fetchone()[0]
                if not in_history:
                    drop_run_table(conn, name)
        except errors.LockNotAvailable:
            left += 1
            log.info(
                "%s is still read by a transaction; it leaves %s at the next publish", name, live_name(spec)
            )
    return left


def republish_latest(
    conn: psycopg.Connection,
    spec: JobSpec,
    model_id: int,
    reason: str,
    *,
    lock_timeout_ms: int,
    attempts: int,
) -> date:
    """Point predictions.<job> back at the newest day a model published, without re-scoring."""
    row = conn.execute(
        """select p.as_of, p.run_id, p.table_name from mlpipe.partitions p join mlpipe.runs r using (run_id)
           where p.job = %s and p.kind = 'published' and r.model_id = %s
           order by p.as_of desc limit 1""",
        [spec.name, model_id],
    ).fetchone()
    if row is None:
        raise UsageError(
            f"no day of {spec.name} published by that model is still in history; score a day instead"
        )
    as_of, run_id, table = row
    retire_live_tables(conn, spec)
    _retrying(
        conn,
        f"republish {spec.name} for {as_of}",
        lock_timeout_ms,
        attempts,
        lambda: _point_view(conn, spec, as_of, run_id, table, reason),
    )
    return as_of


def apply_retention(
    conn: psycopg.Connection, spec: JobSpec, *, lock_timeout_ms: int, attempts: int
) -> list[date]:
    """Drop history (and shadow) partitions older than outputs.history_days before the newest
    published day; the day the view shows is always kept, and so is a table still a child of
    <job>_live (the next publish retires it, then a later retention drops it). Returns the days dropped."""
    rows = conn.execute(
        """select p.kind, p.as_of, p.table_name from mlpipe.partitions p
           where p.job = %(job)s
             and p.as_of <= (select max(as_of) from mlpipe.partitions
                             where job = %(job)s and kind = 'published') - %(days)s::int
             and p.as_of is distinct from (select as_of from mlpipe.live_views where job = %(job)s)
             and not exists (select from pg_inherits i
                             where i.inhparent = to_regclass(%(live)s)
                               and i.inhrelid = to_regclass(%(schema)s || '.' || quote_ident(p.table_name)))
           order by p.as_of""",
        {
            "job": spec.name,
            "days": spec.outputs.history_days,
            "live": sql.Identifier(DATA_SCHEMA, live_name(spec)).as_string(conn),
            "schema": DATA_SCHEMA,
        },
    ).fetchall()

    def drop(kind: str, as_of: date, table: str) -> None:
        _lock_nowait(conn, table)
        drop_run_table(conn, table)  # leaves its parents with it
        conn.execute(
            "delete from mlpipe.partitions where job = %s and kind = %s and as_of = %s",
            [spec.name, kind, as_of],
        )

    for kind, as_of, table in rows:
        _retrying(
            conn,
            f"drop {spec.name} {kind} partition {as_of}",
            lock_timeout_ms,
            attempts,
            lambda k=kind, d=as_of, t=table: drop(k, d, t),
        )
        log.info("retention: dropped %s %s partition of %s", spec.name, kind, as_of)
    return sorted({as_of for _, as_of, _ in rows})
