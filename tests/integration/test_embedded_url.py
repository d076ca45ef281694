"""The embedded database's URL is read from its postmaster.pid while it runs, the same URL pgserver gives."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from mlpipe import db
from mlpipe.settings import Settings

pytestmark = [pytest.mark.integration]


def test_a_running_embedded_database_is_found_by_its_pid_file(pg_server, tmp_path):
    if "host=/" not in pg_server:
        pytest.skip("--test-dsn names a server that is not an embedded one")
    with psycopg.connect(pg_server) as conn:
        data_directory = conn.execute("show data_directory").fetchone()[0]
    home = tmp_path / "home"
    home.mkdir()
    (home / "pgdata").symlink_to(data_directory)
    settings = Settings(home=home, database_url=None)

    assert db.database_url(settings) == pg_server, "the URL pgserver gives, without asking pgserver"


def test_a_stopped_or_starting_server_is_left_to_pgserver(tmp_path):
    settings = Settings(home=tmp_path, database_url=None)
    assert db._ready_url(settings) is None, "no pid file"
    pgdata: Path = settings.pgdata
    pgdata.mkdir()
    lines = ["999999999", str(pgdata), "0", "5432", str(pgdata), "", "0 0", "ready"]
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert db._ready_url(settings) is None, "a dead postmaster"
    lines[0] = str(os.getpid())
    lines[7] = "starting"
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert db._ready_url(settings) is None, "not ready yet"
    lines[7] = "ready"
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
    assert db._ready_url(settings) == f"postgresql://postgres:@/postgres?host={pgdata}"
