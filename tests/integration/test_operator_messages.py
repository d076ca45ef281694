"""What an operator reads when the database or a job's SQL is not what mlpipe expects: one line."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from mlpipe.db import connection, migration_files
from mlpipe.errors import SourceError
from mlpipe.extract import check_features_source
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, run_cli

pytestmark = [pytest.mark.integration]

MIGRATIONS = len(migration_files())


def _one_error_line(out) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def bare_db(pg_server: str) -> str:
    """An empty database, as a new server's administrator has it before `mlpipe db migrate`."""
    name = f"mlpipe_bare_{uuid.uuid4().hex[:8]}"
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(pg_server, dbname=name)
    with connection(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.mark.parametrize("command", [["runs"], ["lookup", "1"], ["models"]])
def test_an_unmigrated_database_is_one_line_and_left_untouched(bare_db, mlpipe_home, command):
    out = run_cli(*command, env={"MLPIPE_DATABASE_URL": bare_db, "MLPIPE_HOME": str(mlpipe_home)})
    assert _one_error_line(out) == (
        f"error: database schema is at migration 0 of {MIGRATIONS}; "
        "run `mlpipe db migrate` as an administrator"
    )
    with connection(bare_db, autocommit=True) as conn:
        assert conn.execute("select to_regnamespace('mlpipe')").fetchone()[0] is None


def test_a_pending_migration_is_applied_by_an_administrator_not_the_writer(conn, db_url, login_url):
    last = migration_files()[-1].stem
    conn.execute("delete from mlpipe.migrations where version = %s", [last])
    writer = {"MLPIPE_DATABASE_URL": login_url("mlpipe_writer")}
    assert _one_error_line(run_cli("runs", env=writer)) == (
        f"error: database schema is at migration {MIGRATIONS - 1} of {MIGRATIONS}; "
        "run `mlpipe db migrate` as an administrator"
    )
    refused = _one_error_line(run_cli("db", "migrate", env=writer))
    assert "cannot apply migrations as mlpipe_login_" in refused and "permission denied" in refused
    assert "an administrator's MLPIPE_DATABASE_URL" in refused
    migrated = run_cli("db", "migrate")  # the test's superuser URL
    assert migrated.returncode == 0 and f"applied: {last}" in migrated.stdout, migrated.stderr
    assert run_cli("runs", env=writer).returncode == 0


def test_a_declared_column_the_features_sql_does_not_return_is_named(conn, tmp_path):
    folder = tmp_path / "churn"
    shutil.copytree(Path(__file__).parents[2] / "jobs" / "churn", folder)
    spec = load_job(folder, Settings())
    dropped = next(iter(spec.features))
    kept = [spec.entity.key, *(name for name in spec.features if name != dropped)]
    narrower = sql.SQL("select {} from ({}) as original").format(
        sql.SQL(", ").join(map(sql.Identifier, kept)), sql.SQL(spec.sql("features"))
    )
    (folder / "features.sql").write_text(narrower.as_string(conn))
    with pytest.raises(SourceError) as caught:
        check_features_source(conn, load_job(folder, Settings()), days_ago(1))
    message = str(caught.value)
    assert f"the features SQL does not return {dropped} (declared in the spec); it returns " in message
    assert "none" not in message and "\n" not in message
