"""The reader role sees predictions and nothing else; the analyst may also read mlpipe."""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import days_ago, score

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


@pytest.mark.parametrize(
    "statement",
    [
        "insert into predictions.churn_history (entity_id, score, decision, percentile, model_version, as_of,"
        " run_id) values (1, 0.5, true, 50, 'x', current_date, 1)",
        "update predictions.churn_history set score = 0",
        "delete from predictions.churn_history",
        "drop view predictions.churn",
        "drop table predictions.churn_history",
        "select * from mlpipe.runs",
        "select * from mlpipe.models",
        "create table predictions.sneaky (x int)",
    ],
)
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
