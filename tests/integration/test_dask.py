"""Chunk tasks on a real Dask cluster (scheduler and two workers as separate processes on loopback)
publish exactly what the thread runner publishes."""

from __future__ import annotations

import pytest

from tests.fixtures.fix_dask import chunk_writers
from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.integration]


def test_dask_workers_publish_what_threads_publish(conn, dask_cluster, monkeypatch):
    address, worker_pids = dask_cluster
    day = days_ago(1)
    by_threads = score("churn", day)
    threads_rows = {k: v[:5] for k, v in published(conn).items()}

    monkeypatch.setenv("MLPIPE_DASK_ADDRESS", address)
    by_dask = score("churn", day)

    assert by_dask["run_id"] != by_threads["run_id"] and by_dask["chunks"] > 1
    assert {k: v[:5] for k, v in published(conn).items()} == threads_rows
    writers = chunk_writers(conn, by_dask["run_id"])
    assert writers and writers <= worker_pids, "every chunk was written by a Dask worker process"
