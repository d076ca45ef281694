"""Chunk tasks on a real Dask cluster (scheduler and two workers as separate processes on loopback)
publish exactly what the thread runner publishes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.integration]
DASK = str(Path(sys.executable).parent / "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(db_url, prefect_api, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "DASK_TEMPORARY_DIRECTORY": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).parents[2]),  # workers run this checkout's code, like the client
    }
    common = {
        "env": env,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "start_new_session": True,
    }
    port = address.rsplit(":", 1)[1]
    processes = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"], **common
        )
    ]
    processes += [
        subprocess.Popen(
            [
                DASK,
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--local-directory",
                str(tmp_path / f"worker{i}"),
            ],
            **common,
        )
        for i in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, {p.pid for p in processes[1:]}
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_dask_workers_publish_what_threads_publish(conn, dask_cluster, monkeypatch):
    address, worker_pids = dask_cluster
    day = days_ago(1)
    by_threads = score("churn", day)
    threads_rows = {k: v[:5] for k, v in published(conn).items()}

    monkeypatch.setenv("MLPIPE_DASK_ADDRESS", address)
    by_dask = score("churn", day)

    assert by_dask["run_id"] != by_threads["run_id"] and by_dask["chunks"] > 1
    assert {k: v[:5] for k, v in published(conn).items()} == threads_rows
    writers = {
        int(w.rsplit(":", 1)[1])
        for (w,) in conn.execute(
            "select worker from mlpipe.run_chunks where run_id = %s", [by_dask["run_id"]]
        )
    }
    assert writers and writers <= worker_pids, "every chunk was written by a Dask worker process"
