"""Training runs end like scoring runs: failed on any exit, a killed one abandoned by the next start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import date

import pytest

from mlpipe import runs, train
from mlpipe.db import connect
from mlpipe.errors import RunLockedError
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.fixtures.processes import wait_for

pytestmark = [pytest.mark.integration]

TRAINING_STARTED = "select count(*) > 0 from mlpipe.runs where kind = 'train' and status = 'running'"


def _cli(db_url: str, api_url: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "MLPIPE_DATABASE_URL": db_url, "PREFECT_API_URL": api_url}
    return subprocess.Popen(
        [sys.executable, "-m", "mlpipe.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _train_runs(conn) -> list[tuple]:
    return conn.execute(
        "select run_id, status, error from mlpipe.runs where kind = 'train' order by run_id"
    ).fetchall()


def test_a_killed_training_is_abandoned_and_a_bad_training_set_is_one_line(db_url, conn, prefect_api):
    before = len(_train_runs(conn))
    proc = _cli(db_url, prefect_api, "train", "--job", "churn")
    try:
        wait_for(conn, TRAINING_STARTED, [], proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = _train_runs(conn)[before]
    assert killed[1] == "running", "a SIGKILL leaves the row behind; the next start must notice"

    # Long before the demo world began: no labeled rows, which is the data's fault, said in one line.
    proc = _cli(db_url, prefect_api, "train", "--job", "churn", "--as-of", "2001-01-01")
    out, _ = proc.communicate(timeout=300)
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 1, out.decode()
    assert lines[-1].startswith("error: job churn: the training set as of 2001-01-01"), lines
    assert lines[:-1] == [
        f"WARNING mlpipe.runs: train run {killed[0]} of churn died without finishing; marked abandoned"
    ], "the error is one line, after the abandoned run's notice"

    runs = {run_id: (status, error) for run_id, status, error in _train_runs(conn)}
    assert runs[killed[0]][0] == "abandoned"
    newest = max(runs)
    assert runs[newest][0] == "failed" and "SourceError" in runs[newest][1]
    assert not [r for r, (status, _) in runs.items() if status == "running"]


def test_an_interrupted_training_is_marked_failed(db_url, conn, tmp_path):
    settings = Settings()
    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", settings).folder, folder)
    derived = folder / "derived.py"
    # Ctrl-C while features are computed: a BaseException, not an Exception.
    derived.write_text(
        derived.read_text() + "\n\ndef session_trend(frame):\n    raise KeyboardInterrupt\n",
        encoding="utf-8",
    )
    spec = load_job(str(folder / "job.yaml"), settings)
    with pytest.raises(KeyboardInterrupt):
        train.train(connect(db_url), settings, spec, date.today())
    run_id, status, error = _train_runs(conn)[-1]
    assert status == "failed" and error.startswith("KeyboardInterrupt")


def test_two_trainings_of_a_job_cannot_run_at_once(db_url, conn):
    settings = Settings()
    spec = load_job("churn", settings)
    holder = connect(db_url)
    assert runs.try_lock(holder, "train", "churn")
    try:
        with pytest.raises(RunLockedError, match="is already training churn"):
            train.train(connect(db_url), settings, spec, date.today())
    finally:
        holder.close()
