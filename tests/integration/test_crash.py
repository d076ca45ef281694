"""A scoring run killed with SIGKILL in a real subprocess leaves the published predictions as they were,
and nothing the killed `mlpipe score` started outlives it but the managed Prefect server, which is
meant to (the next command reuses it)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from psycopg import sql

from mlpipe import prefect_api as managed
from mlpipe.db import connection
from mlpipe.settings import Settings
from tests.fixtures.processes import (
    DONE_ALL,
    DONE_SOME,
    RUN_STARTED,
    WAITING_ON,
    killed_at_the_end,
    start_cli_score,
    wait_for,
)
from tests.helpers import days_ago, history_days, population, published, score

pytestmark = [pytest.mark.integration]


# Each kill point: (table a blocker locks, lock mode, lock only once the run has started,
# the query that says the run has reached the point, its parameters).
KILL_POINTS = {
    # a chunk's COPY of its features waits on demo.events (locked after planning, which reads it too)
    "during_extract": ("demo.events", "access exclusive", True, WAITING_ON, ["select source.%"]),
    # a chunk has copied its rows into the run table; recording the chunk waits
    "during_write": ("mlpipe.run_chunks", "exclusive", False, WAITING_ON, ["insert into mlpipe.run_chunks%"]),
    # publish can never complete: some chunks are done, or all of them
    "after_first_chunk": ("predictions.churn_history", "share", False, DONE_SOME, []),
    "before_publish": ("predictions.churn_history", "share", False, DONE_ALL, []),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_mid_run_leaves_predictions_untouched(db_url, conn, prefect_api, kill_point):
    published_day, crashed_day = days_ago(3), days_ago(1)
    first = score("churn", published_day)
    view_before, history_before = published(conn), history_days(conn)
    partitions_before = conn.execute("select * from mlpipe.partitions order by as_of").fetchall()

    table, mode, after_start, reached, params = KILL_POINTS[kill_point]
    lock = sql.SQL("lock table {} in {} mode").format(sql.Identifier(*table.split(".")), sql.SQL(mode))
    with connection(db_url) as blocker:
        if not after_start:
            blocker.execute(lock)
        proc = start_cli_score(db_url, prefect_api, crashed_day)
        with killed_at_the_end(proc):
            if after_start:
                wait_for(conn, RUN_STARTED, [], proc)
                blocker.execute(lock)
            wait_for(conn, reached, params, proc)
        blocker.rollback()

    assert proc.returncode == -signal.SIGKILL
    assert published(conn) == view_before
    assert history_days(conn) == history_before
    assert conn.execute("select * from mlpipe.partitions order by as_of").fetchall() == partitions_before
    crashed = conn.execute(
        "select run_id from mlpipe.runs where as_of = %s and status = 'running'", [crashed_day]
    ).fetchone()[0]
    done_before = conn.execute(
        "select chunk_no, finished_at from mlpipe.run_chunks where run_id = %s order by 1", [crashed]
    ).fetchall()
    if kill_point in ("after_first_chunk", "before_publish"):
        assert done_before, "some chunks had finished before the kill"

    resumed = score("churn", crashed_day)

    # the crashed run is continued: same run, its finished chunks kept, only the missing ones run
    assert resumed["run_id"] == crashed
    assert resumed["timings"]["resumed_chunks"] == len(done_before)
    kept = conn.execute(
        """select chunk_no, finished_at from mlpipe.run_chunks
           where run_id = %s and chunk_no = any(%s) order by 1""",
        [crashed, [c for c, _ in done_before]],
    ).fetchall()
    assert kept == done_before
    assert resumed["rows_scored"] == population(conn, crashed_day)
    assert {r[5] for r in published(conn).values()} == {crashed}
    assert history_days(conn) == {**history_before, crashed_day: population(conn, crashed_day)}
    # a resumed run's table is published with its key index
    keyed = conn.execute(
        """select count(*) from pg_constraint c join pg_class t on t.oid = c.conrelid
           where t.relname = %s and c.contype = 'p'""",
        [f"churn_r{crashed}"],
    ).fetchone()[0]
    assert keyed == 1

    # and what it published is exactly what an uninterrupted run publishes
    resumed_scores = {k: v[:3] for k, v in published(conn).items()}
    fresh = score("churn", crashed_day)
    assert fresh["run_id"] != crashed and "resumed_chunks" not in fresh["timings"]
    assert {k: v[:3] for k, v in published(conn).items()} == resumed_scores
    assert first["run_id"] in {r[0] for r in conn.execute("select run_id from mlpipe.partitions")}


def test_a_crashed_run_with_another_model_is_dropped_not_resumed(db_url, conn, prefect_api):
    day = days_ago(1)
    score("churn", days_ago(3))  # the job's tables exist from the first published day on
    with connection(db_url) as blocker:
        blocker.execute("lock table predictions.churn_history in share mode")
        proc = start_cli_score(db_url, prefect_api, day)
        with killed_at_the_end(proc):
            wait_for(conn, DONE_SOME, [], proc)
        blocker.rollback()
    crashed = conn.execute("select run_id from mlpipe.runs where status = 'running'").fetchone()[0]
    conn.execute("update mlpipe.runs set model_id = null where run_id = %s", [crashed])  # as if another model

    rerun = score("churn", day)

    assert rerun["run_id"] != crashed
    assert (
        conn.execute("select status from mlpipe.runs where run_id = %s", [crashed]).fetchone()[0]
        == "abandoned"
    )
    assert conn.execute("select to_regclass(%s)", [f"mlpipe_data.churn_r{crashed}"]).fetchone()[0] is None


def _descendants_once_running(db_url, conn, day, tmp_path):
    """Start `mlpipe score` without PREFECT_API_URL, hold it mid-run; yield it and its descendants
    other than the managed Prefect server (under MLPIPE_HOME), and that server."""
    settings = Settings(home=os.environ["MLPIPE_HOME"])  # the session's: its models' artifacts are there
    proc = start_cli_score(db_url, None, day, prefect_home=tmp_path, mlpipe_home=settings.home)
    try:
        with connection(db_url) as blocker, killed_at_the_end(proc):
            wait_for(conn, RUN_STARTED, [], proc)
            blocker.execute("lock table demo.events in access exclusive mode")  # a chunk's extract waits
            wait_for(conn, WAITING_ON, ["select source.%"], proc)
            server = managed.running(settings)
            assert server is not None, "the command started the managed Prefect server"
            children = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.pid != server.pid]
            yield proc, children, blocker
            assert managed.running(settings) == server, "the managed server outlives the command"
    finally:
        managed.stop_server(settings)


def _survivors(children: list[psutil.Process]) -> list[psutil.Process]:
    """The children still running after a few seconds (a zombie has ended: its new parent reaps it)."""
    deadline = time.monotonic() + 20
    alive = children
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=1)
        alive = [p for p in alive if _running(p)]
    for process in alive:  # do not leave them to the next test
        process.kill()
    return alive


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_leaves_no_process_behind(db_url, conn, tmp_path):
    for proc, children, _ in _descendants_once_running(db_url, conn, days_ago(1), tmp_path):
        os.kill(proc.pid, signal.SIGKILL)  # the command only, as the OOM killer would
        proc.wait(timeout=30)
        assert _survivors(children) == [], "a process started by the killed command outlived it"


# Prefect ends a flow stopped by SIGTERM by raising the signal again once the run is handled, so the
# command dies of it, as a SIGTERMed process does; Ctrl-C ends it with the shell's 128 + SIGINT (Typer).
ENDS = {
    signal.SIGTERM: (-signal.SIGTERM, "Execution was aborted by a termination signal"),
    signal.SIGINT: (128 + signal.SIGINT, "Execution was aborted by an interrupt signal"),
}


@pytest.mark.parametrize("signum", list(ENDS))
def test_sigterm_or_ctrl_c_fails_the_run_and_stops_everything(db_url, conn, tmp_path, signum):
    returncode, message = ENDS[signum]
    for proc, children, blocker in _descendants_once_running(db_url, conn, days_ago(1), tmp_path):
        os.kill(proc.pid, signum)
        blocker.rollback()  # the chunk waiting on the lock finishes; the ones not started never start
        proc.wait(timeout=60)
        output = proc.stdout.read().decode()
        assert proc.returncode == returncode, output
        assert message in output, output
        assert "Traceback" not in output and "Error logging to API" not in output, output
        assert _survivors(children) == []
    status, error = conn.execute("select status, error from mlpipe.runs where kind = 'score'").fetchone()
    assert status == "failed" and error
