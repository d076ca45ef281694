"""Run bookkeeping: the one owner of mlpipe.runs (score and train runs) and their (job, day) locks.

Every run takes an advisory lock on its own connection for as long as it lives, so a second run of
the same (job, day) fails at once, and a run killed with the lock's connection leaves a row still
marked `running` that the next run finds, knowing it died: it is resumed or marked abandoned.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mlpipe.errors import RunLockedError

Kind = Literal["score", "train", "monitor", "topup"]

log = logging.getLogger(__name__)

ABANDONED = "the process ended without finishing (crash or kill); not resumable"


@dataclass(frozen=True)
class CrashedRun:
    """A run of this (job, day) still marked running while we hold its lock: its process died."""

    run_id: int
    model_id: int | None
    challenger_model_id: int | None
    plan: list | None
    population: int | None
    spec_digest: str | None


def lock_key(kind: Kind, job: str, as_of: date | None) -> str:
    # Training and the monitor hold one lock per job (any day): two of them would race for the same rows.
    return f"mlpipe.{kind}:{job}" if kind in ("train", "monitor") else f"mlpipe.{kind}:{job}:{as_of}"


def try_lock(conn: psycopg.Connection, kind: Kind, job: str, as_of: date | None = None) -> bool:
    """Take the run's advisory lock on `conn` (session level: released when it closes)."""
    return conn.execute(
        "select pg_try_advisory_lock(hashtextextended(%s, 0))", [lock_key(kind, job, as_of)]
    ).fetchone()[0]


def lock_holder(conn: psycopg.Connection, kind: Kind, job: str, as_of: date | None = None) -> str:
    """Who holds the lock, in words: the newest running run of (job, day), or 'another run'."""
    row = conn.execute(
        """select run_id, host, pid, started_at from mlpipe.runs
           where job = %s and kind = %s and status = 'running' and (%s::date is null or as_of = %s)
           order by started_at desc limit 1""",
        [job, kind, as_of, as_of],
    ).fetchone()
    if row is None:
        return "another run"
    return f"run {row[0]} (pid {row[2]} on {row[1]}, started {row[3]:%Y-%m-%d %H:%M:%S})"


def start_exclusive(conn: psycopg.Connection, kind: Kind, job: str, as_of: date) -> int:
    """Start a training or monitor run, one per job at a time: take the job's lock on `conn` (or
    fail naming the holder) and mark the job's dead runs of this kind abandoned."""
    if not try_lock(conn, kind, job):
        doing = {"train": "training", "monitor": "monitoring", "score": "scoring"}[kind]
        raise RunLockedError(
            f"{lock_holder(conn, kind, job)} is already {doing} {job}; "
            "wait for it to finish (`mlpipe runs`) and run again"
        )
    for dead in crashed(conn, kind, job):
        abandon(conn, dead.run_id)
        log.warning("%s run %s of %s died without finishing; marked abandoned", kind, dead.run_id, job)
    return start(conn, kind, job, as_of)


def start(
    conn: psycopg.Connection,
    kind: Kind,
    job: str,
    as_of: date,
    *,
    model_id: int | None = None,
    challenger_model_id: int | None = None,
    challenger_mode: str | None = None,
    spec_digest: str | None = None,
) -> int:
    """Record a new running run of this process; returns its run_id."""
    return conn.execute(
        """insert into mlpipe.runs (job, kind, as_of, model_id, challenger_model_id, challenger_mode,
               spec_digest, status, host, pid)
           values (%s, %s, %s, %s, %s, %s, %s, 'running', %s, %s) returning run_id""",
        [
            job,
            kind,
            as_of,
            model_id,
            challenger_model_id,
            challenger_mode,
            spec_digest,
            socket.gethostname(),
            os.getpid(),
        ],
    ).fetchone()[0]


def crashed(conn: psycopg.Connection, kind: Kind, job: str, as_of: date | None = None) -> list[CrashedRun]:
    """Runs still marked running, newest first. Call it holding the lock: they are all dead."""
    rows = conn.execute(
        """select run_id, model_id, challenger_model_id, plan, population, spec_digest from mlpipe.runs
           where job = %s and kind = %s and status = 'running' and (%s::date is null or as_of = %s)
           order by run_id desc""",
        [job, kind, as_of, as_of],
    ).fetchall()
    return [CrashedRun(*row) for row in rows]


def abandon(conn: psycopg.Connection, run_id: int) -> None:
    """Mark a dead run abandoned (its process is gone and it will not be resumed)."""
    conn.execute(
        """update mlpipe.runs set status = 'abandoned', finished_at = now(), error = %s
           where run_id = %s and status = 'running'""",
        [ABANDONED, run_id],
    )


def take_over(conn: psycopg.Connection, run_id: int) -> int:
    """Continue a dead run in this process; returns how many of its chunks were finished."""
    conn.execute(
        "update mlpipe.runs set host = %s, pid = %s, error = null where run_id = %s",
        [socket.gethostname(), os.getpid(), run_id],
    )
    return conn.execute("select count(*) from mlpipe.run_chunks where run_id = %s", [run_id]).fetchone()[0]


def record_plan(conn: psycopg.Connection, run_id: int, population: int, plan: list) -> None:
    """The population and the chunks' key ranges, so a crashed run can be resumed chunk by chunk."""
    conn.execute(
        "update mlpipe.runs set population = %s, chunks = %s, plan = %s where run_id = %s",
        [population, len(plan), Jsonb(plan), run_id],
    )


def record_source_as_of(conn: psycopg.Connection, run_id: int, moment: datetime) -> None:
    """A top-up: the moment its population and features were read as of (its rows keep the day)."""
    conn.execute("update mlpipe.runs set source_as_of = %s where run_id = %s", [moment, run_id])


def record_counts(conn: psycopg.Connection, run_id: int, scored: int, quarantined: int) -> None:
    """Rows scored and quarantined, kept even if the run fails after its chunks."""
    conn.execute(
        "update mlpipe.runs set rows_scored = %s, rows_quarantined = %s where run_id = %s",
        [scored, quarantined, run_id],
    )


def record_flow_run(conn: psycopg.Connection, run_id: int, flow_run_id: str | None) -> None:
    """The Prefect flow run that carries this run (None outside a flow run: nothing to record)."""
    if flow_run_id is not None:
        conn.execute("update mlpipe.runs set flow_run_id = %s where run_id = %s", [str(flow_run_id), run_id])


def score_outcome(conn: psycopg.Connection, run_id: int) -> dict | None:
    """A scoring run's status, model, counts, error, timings and gates, as recorded."""
    cur = conn.execute(
        """select r.status, m.model_version as model, r.population, r.rows_scored, r.rows_quarantined,
                  r.chunks, r.error, r.timings, r.gates
           from mlpipe.runs r left join mlpipe.models m using (model_id) where r.run_id = %s""",
        [run_id],
    )
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row, strict=True))


def quarantine_reasons(conn: psycopg.Connection, run_id: int) -> list[tuple[str, int]]:
    """Why a run's rows were quarantined: (reason, rows), most frequent first."""
    return conn.execute(
        """select reason, count(*) from mlpipe.quarantine where run_id = %s
           group by reason order by count(*) desc, reason""",
        [run_id],
    ).fetchall()


def record_gates(conn: psycopg.Connection, run_id: int, gates: dict) -> None:
    conn.execute("update mlpipe.runs set gates = %s where run_id = %s", [Jsonb(gates), run_id])


def record_result(
    conn: psycopg.Connection,
    run_id: int,
    timings: dict,
    score_histogram: dict | None = None,
    input_histograms: dict | None = None,
) -> None:
    """Timings, and a scoring run's score histogram and drift counts (its inputs' and the score's)."""
    conn.execute(
        """update mlpipe.runs set timings = %s, score_histogram = coalesce(%s, score_histogram),
               input_histograms = coalesce(%s, input_histograms)
           where run_id = %s""",
        [
            Jsonb(timings),
            score_histogram and Jsonb(score_histogram),
            input_histograms and Jsonb(input_histograms),
            run_id,
        ],
    )


def status(conn: psycopg.Connection, run_id: int) -> str | None:
    row = conn.execute("select status from mlpipe.runs where run_id = %s", [run_id]).fetchone()
    return row and row[0]


def mark_published(conn: psycopg.Connection, run_id: int) -> None:
    """Inside publish's transaction: the run is what readers see for its day."""
    conn.execute(
        "update mlpipe.runs set status = 'published', finished_at = now() where run_id = %s", [run_id]
    )


def succeed(conn: psycopg.Connection, run_id: int, model_id: int | None, timings: dict) -> None:
    """A run that finished: a training run with the version it registered, or a monitor run."""
    conn.execute(
        """update mlpipe.runs set status = 'succeeded', model_id = %s, finished_at = now(), timings = %s
           where run_id = %s""",
        [model_id, Jsonb(timings), run_id],
    )


def fail(conn: psycopg.Connection, run_id: int, exc: BaseException) -> None:
    """Mark a run failed with its error (the type and message, as operators read it)."""
    message = str(exc) or "interrupted"
    conn.execute(
        "update mlpipe.runs set status = 'failed', finished_at = now(), error = %s where run_id = %s",
        [f"{type(exc).__name__}: {message}"[:4000], run_id],
    )


def previous_score_histogram(conn: psycopg.Connection, job: str, as_of: date, run_id: int) -> list | None:
    """Score histogram counts of the newest published day before `as_of` (the gate's yardstick)."""
    row = conn.execute(
        """select r.score_histogram -> 'counts' from mlpipe.partitions p join mlpipe.runs r using (run_id)
           where p.job = %s and p.kind = 'published' and p.as_of < %s and r.run_id <> %s
           order by p.as_of desc limit 1""",
        [job, as_of, run_id],
    ).fetchone()
    return row[0] if row and row[0] else None


def quarantined_keys(conn: psycopg.Connection, run_id: int, limit: int = 5) -> list:
    """A few quarantined keys of a run, to show an operator where to look."""
    rows = conn.execute(
        "select entity_id from mlpipe.quarantine where run_id = %s order by entity_id limit %s",
        [run_id, limit],
    )
    return [r[0] for r in rows]


def recent(conn: psycopg.Connection, job: str | None, limit: int, status: str | None = None) -> list[dict]:
    """The newest runs (of one job, or all; of one status, or any), newest first, as `mlpipe runs`
    shows them."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """select r.run_id, r.job, r.kind, r.as_of, r.status, m.model_version as model, r.population,
                      r.rows_scored, r.rows_quarantined,
                      extract(epoch from r.finished_at - r.started_at)::float8 as seconds, r.error
               from mlpipe.runs r left join mlpipe.models m using (model_id)
               where (%(job)s::text is null or r.job = %(job)s)
                 and (%(status)s::text is null or r.status = %(status)s)
               order by r.run_id desc limit %(limit)s""",
            {"job": job, "limit": limit, "status": status},
        ).fetchall()


def detail(conn: psycopg.Connection, run_id: int) -> dict | None:
    """One run as `mlpipe runs show` reads it: the row (every column, so columns added by later
    migrations come along), its models, its chunks and its quarantine reasons with counts."""
    with conn.cursor(row_factory=dict_row) as cur:
        run = cur.execute(
            """select r.*, m.model_version, c.model_version as challenger_version,
                      extract(epoch from coalesce(r.finished_at, now()) - r.started_at)::float8 as seconds
               from mlpipe.runs r
               left join mlpipe.models m on m.model_id = r.model_id
               left join mlpipe.models c on c.model_id = r.challenger_model_id
               where r.run_id = %s""",
            [run_id],
        ).fetchone()
        if run is None:
            return None
        run["chunk_results"] = cur.execute(
            """select chunk_no, key_lo, key_hi, rows_in, rows_scored, rows_quarantined, seconds
               from mlpipe.run_chunks where run_id = %s order by chunk_no""",
            [run_id],
        ).fetchall()
        run["quarantine_reasons"] = cur.execute(
            """select reason, count(*) as rows from mlpipe.quarantine where run_id = %s
               group by reason order by count(*) desc, reason limit 50""",
            [run_id],
        ).fetchall()
    return run
