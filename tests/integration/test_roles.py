"""The pipeline runs as a login in mlpipe_writer; the reader role sees predictions and nothing else;
the analyst may also read mlpipe."""

from __future__ import annotations

import psycopg
import pytest

from flows.backfill import backfill_flow
from flows.train import train_flow
from mlpipe.db import connection
from tests.helpers import days_ago, published, run_cli, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def scored(conn):
    return score("churn", days_ago(1))


def _as_role(conn: psycopg.Connection, role: str, statement: str | psycopg.sql.Composable) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute(psycopg.sql.SQL("set local role {}").format(psycopg.sql.Identifier(role)))
        conn.execute(statement)


def test_reader_can_select_predictions_and_history(conn, scored):
    _as_role(conn, "mlpipe_reader", "select * from predictions.churn limit 1")
    _as_role(conn, "mlpipe_reader", "select * from predictions.churn_history limit 1")


REFUSED_TO_READERS = [
    "insert into predictions.churn_history (entity_id, score, decision, percentile, model_version, as_of,"
    " run_id) values (1, 0.5, true, 50, 'x', current_date, 1)",
    "update predictions.churn_history set score = 0",
    "delete from predictions.churn_history",
    "drop view predictions.churn",
    "drop table predictions.churn_history",
    "select * from mlpipe.runs",
    "select * from mlpipe.models",
    "create table predictions.sneaky (x int)",
]


@pytest.mark.parametrize("statement", REFUSED_TO_READERS)
def test_reader_cannot_write_drop_or_read_pipeline_state(conn, scored, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(conn, "mlpipe_reader", statement)


def test_reader_cannot_reach_run_tables_directly(conn, scored):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        run_table = psycopg.sql.Identifier("mlpipe_data", f"churn_r{scored['run_id']}")
        _as_role(conn, "mlpipe_reader", psycopg.sql.SQL("select * from {}").format(run_table))


def test_analyst_reads_pipeline_state_but_cannot_change_it(conn, scored):
    _as_role(conn, "mlpipe_analyst", "select * from mlpipe.runs")
    _as_role(conn, "mlpipe_analyst", "select * from predictions.churn_history limit 1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _as_role(conn, "mlpipe_analyst", "delete from mlpipe.runs")


def _owners(conn: psycopg.Connection) -> set[str]:
    """Owners of the tables and views the pipeline attaches, replaces and drops."""
    rows = conn.execute(
        """select distinct pg_get_userbyid(c.relowner) from pg_class c
           join pg_namespace n on n.oid = c.relnamespace
           where n.nspname in ('predictions', 'mlpipe_data') and c.relkind in ('r', 'p', 'v')"""
    ).fetchall()
    return {r[0] for r in rows}


def test_the_pipeline_runs_as_a_login_role_in_mlpipe_writer(conn, login_url, monkeypatch):
    score("churn", days_ago(3))  # an administrator published first: what it made is the writer's too
    assert _owners(conn) == {"mlpipe_writer"}
    writer = login_url("mlpipe_writer")
    user = psycopg.conninfo.conninfo_to_dict(writer)["user"]
    monkeypatch.setenv("MLPIPE_DATABASE_URL", writer)

    trained = train_flow(job="churn")
    assert trained["model_version"] == "churn-v2"
    # Re-scoring day -3 replaces the administrator's partition (detach, drop); day -2 is new.
    backfill_flow(job="churn", start=days_ago(3), end=days_ago(2), model_version="churn-v1")
    if not trained["promoted"]:
        promoted = run_cli("models", "promote", "churn-v2", "--reason", "writer test")
        assert promoted.returncode == 0, promoted.stderr
    today = score("churn", days_ago(1))
    assert today["model_version"] == "churn-v2" and today["view_moved"]
    rolled = run_cli("models", "rollback", "--reason", "writer test", "--republish")
    assert rolled.returncode == 0, rolled.stderr
    shown = published(conn)
    assert {(v[3], v[4]) for v in shown.values()} == {("churn-v1", days_ago(2))}
    for command in (["runs"], ["lookup", str(next(iter(shown)))], ["models"]):
        out = run_cli(*command)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr

    runs = conn.execute("select kind, status from mlpipe.runs where job = 'churn' order by run_id").fetchall()
    assert runs[-4:] == [("train", "succeeded")] + [("score", "published")] * 3
    assert _owners(conn) == {"mlpipe_writer"}
    # All of that as a plain login: no superuser, no CREATEROLE, not the database's owner.
    role = conn.execute(
        """select r.rolsuper or r.rolcreaterole or r.rolcreatedb, d.datdba = r.oid from pg_roles r
           join pg_database d on d.datname = current_database() where r.rolname = %s""",
        [user],
    ).fetchone()
    assert role == (False, False)


def test_a_reader_login_can_select_predictions_and_nothing_else(conn, scored, login_url):
    reader = login_url("mlpipe_reader")
    run_table = psycopg.sql.Identifier("mlpipe_data", f"churn_r{scored['run_id']}")
    refused = [*REFUSED_TO_READERS, psycopg.sql.SQL("select * from {}").format(run_table)]
    with connection(reader, autocommit=True) as as_reader:
        assert as_reader.execute("select count(*) from predictions.churn").fetchone()[0] > 0
        as_reader.execute("select * from predictions.churn_history limit 1")
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_reader.execute(statement)
    entity = conn.execute("select entity_id from predictions.churn limit 1").fetchone()[0]
    lookup = run_cli("lookup", str(entity), env={"MLPIPE_DATABASE_URL": reader})
    assert lookup.returncode == 0, lookup.stderr  # a frontend's view: no schema check it cannot make
