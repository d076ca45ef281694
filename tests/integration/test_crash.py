"""A scoring run killed with SIGKILL in a real subprocess leaves the published predictions as they were."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mlpipe.db import connection
from tests.helpers import days_ago, history_days, population, published, score

pytestmark = [pytest.mark.integration]


def _start_cli_score(db_url: str, api_url: str, day) -> subprocess.Popen:
    env = {
        **os.environ,
        "MLPIPE_DATABASE_URL": db_url,
        "MLPIPE_CHUNK_ROWS": "100",
        "MLPIPE_WORKERS": "1",
        "PREFECT_API_URL": api_url,  # the session's local Prefect API: no server start in the child
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mlpipe.cli", "score", "--job", "churn", "--as-of", day.isoformat()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(conn, query: str, params: list, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute(query, params).fetchone()[0]:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point: {proc.stdout.read().decode()}")
        time.sleep(0.01)
    raise AssertionError("the kill point was never reached")


@pytest.mark.parametrize("kill_point", ["after_first_chunk", "before_publish"])
def test_sigkill_mid_run_leaves_predictions_untouched(db_url, conn, prefect_api, kill_point):
    published_day, crashed_day = days_ago(3), days_ago(1)
    first = score("churn", published_day)
    view_before, history_before = published(conn), history_days(conn)
    partitions_before = conn.execute("select * from mlpipe.partitions order by as_of").fetchall()

    # A reader holding a SHARE lock on the history table keeps publish from ever completing, so
    # the kill lands before publish however fast the chunks run.
    with connection(db_url) as blocker:
        blocker.execute("lock table predictions.churn_history in share mode")
        proc = _start_cli_score(db_url, prefect_api, crashed_day)
        try:
            if kill_point == "after_first_chunk":
                query = (
                    "select count(*) > 0 from mlpipe.run_chunks c join mlpipe.runs r using (run_id) "
                    "where r.as_of = %s and r.status = 'running'"
                )
            else:  # every chunk written, publish waiting on the lock
                query = (
                    "select count(*) > 0 from mlpipe.runs r where r.as_of = %s and r.status = 'running' "
                    "and r.chunks = (select count(*) from mlpipe.run_chunks c where c.run_id = r.run_id)"
                )
            _wait_for(conn, query, [crashed_day], proc)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        blocker.rollback()

    assert proc.returncode == -signal.SIGKILL
    assert published(conn) == view_before
    assert history_days(conn) == history_before
    assert conn.execute("select * from mlpipe.partitions order by as_of").fetchall() == partitions_before
    crashed = conn.execute(
        "select run_id from mlpipe.runs where as_of = %s and status = 'running'", [crashed_day]
    ).fetchone()[0]

    rerun = score("churn", crashed_day)

    assert rerun["rows_scored"] == population(conn, crashed_day)
    assert {r[5] for r in published(conn).values()} == {rerun["run_id"]}
    assert history_days(conn) == {**history_before, crashed_day: population(conn, crashed_day)}
    status = conn.execute("select status from mlpipe.runs where run_id = %s", [crashed]).fetchone()[0]
    assert status == "abandoned"
    assert conn.execute("select to_regclass(%s)", [f"mlpipe_data.churn_r{crashed}"]).fetchone()[0] is None
    assert first["run_id"] in {r[0] for r in conn.execute("select run_id from mlpipe.partitions")}
