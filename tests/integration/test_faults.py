"""Faults while a real `mlpipe score` runs: a connection dropped mid-chunk, the database restarted."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import pytest

from mlpipe.db import connect, connection
from tests.fixtures.processes import RUN_STARTED, WAITING_ON, start_cli_score, wait_for
from tests.helpers import days_ago, history_days, population, score

pytestmark = [pytest.mark.integration]


def _block_extract_and_start(db_url, conn, prefect_api, day):
    """Start a run and hold its chunks at extract (demo.events locked once planning is done)."""
    blocker = connect(db_url)
    proc = start_cli_score(db_url, prefect_api, day)
    wait_for(conn, RUN_STARTED, [], proc)
    blocker.execute("lock table demo.events in access exclusive mode")
    wait_for(conn, WAITING_ON, ["select source.%"], proc)
    return blocker, proc


def test_a_connection_dropped_mid_chunk_is_retried(db_url, conn, prefect_api):
    score("churn", days_ago(3))
    day = days_ago(1)
    blocker, proc = _block_extract_and_start(db_url, conn, prefect_api, day)
    try:
        killed = conn.execute(
            """select count(pg_terminate_backend(pid)) from pg_stat_activity
               where wait_event_type = 'Lock' and query ilike 'select source.%%'"""
        ).fetchone()[0]
        assert killed == 1
        blocker.rollback()
        out, _ = proc.communicate(timeout=180)
    finally:
        blocker.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert proc.returncode == 0, out.decode()
    run_id, chunks, status = conn.execute(
        "select run_id, chunks, status from mlpipe.runs where as_of = %s and kind = 'score'", [day]
    ).fetchone()
    assert status == "published"
    assert (
        conn.execute("select count(*) from mlpipe.run_chunks where run_id = %s", [run_id]).fetchone()[0]
        == chunks
    )
    assert history_days(conn)[day] == population(conn, day)


def test_a_database_restart_mid_run_is_retried_and_publishes_whole(pg_server, db_url, conn, prefect_api):
    data_directory = Path(conn.execute("show data_directory").fetchone()[0])
    if not (data_directory / ".handle_pids.json").exists():
        pytest.skip("restarting the server mid-run needs the embedded test server, not --test-dsn")
    published_day, day = days_ago(3), days_ago(1)
    score("churn", published_day)

    blocker, proc = _block_extract_and_start(db_url, conn, prefect_api, day)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import pg_ctl
    try:
        # The run's own connection (holding the day's lock) and the chunks' connections all die.
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=data_directory, user="pgserver")
        out, _ = proc.communicate(timeout=240)
    finally:
        blocker.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    text = out.decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "AdminShutdown" not in text, text
    with connection(db_url, autocommit=True) as fresh:
        statuses = fresh.execute(
            "select status from mlpipe.runs where kind = 'score' and as_of = %s", [day]
        ).fetchall()
        assert statuses == [("published",)], "one run, retried on new connections, nothing left running"
        assert history_days(fresh)[day] == population(fresh, day)
        assert set(history_days(fresh)) == {published_day, day}
