"""The mlpipe command as an operator runs it: clear errors, no traceback, nothing lost."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from mlpipe.db import migration_files
from tests.helpers import run_cli as mlpipe

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", "--as-of", "2026-02-30"], "--as-of '2026-02-30' is not a date: use YYYY-MM-DD"),
        (["score", "--as-of", "2999-01-01"], "as_of 2999-01-01 is in the future"),
        (["score", "--job", "no_such_job"], "no job of that name"),
        (["backfill", "--start", "2026-03-05", "--end", "2026-03-01"], "is after its end"),
        (["lookup", "abc"], "bigint keys; 'abc' is not an integer"),
        (["lookup", "1"], "nothing published for job churn yet"),
    ],
)
def test_bad_input_gets_one_clear_line(db_url, args, message):
    out = mlpipe(*args)
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_a_malformed_spec_says_which_field(db_url, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: Bad-Name\nentity: {key: id, type: uuid}\n")
    out = mlpipe("score", "--job", str(spec))
    assert out.returncode == 1
    assert "name: String should match pattern" in out.stderr
    assert "entity.type: Input should be 'bigint' or 'text'" in out.stderr


def test_missing_source_table_is_named(db_url, conn):
    conn.execute("alter table demo.customers rename to customers_old")
    out = mlpipe("score")
    assert out.returncode == 1
    assert 'relation "demo.customers" does not exist' in out.stderr
    assert 'File "' not in out.stderr, "the error inside the flow is one line, not a traceback"


def test_db_status_url_and_models(db_url):
    status = mlpipe("db", "status")
    applied = len(migration_files())
    assert status.returncode == 0 and f"migrations applied {applied}, pending 0" in status.stdout
    assert mlpipe("db", "url").stdout.strip() == db_url
    models = mlpipe("models", "--job", "churn")
    assert "churn-v1" in models.stdout and "champion" in models.stdout
    runs = mlpipe("runs")
    assert runs.returncode == 0 and "train" in runs.stdout


def test_backfill_runs_the_backfill_flow_and_reports_each_day(db_url, conn, prefect_api):
    first, last = date.today() - timedelta(days=3), date.today() - timedelta(days=2)
    days = ["--start", first.isoformat(), "--end", last.isoformat()]
    out = mlpipe("backfill", *days, env={"PREFECT_API_URL": prefect_api})
    assert out.returncode == 0, out.stderr
    runs = conn.execute(
        "select as_of, run_id from mlpipe.runs where kind = 'score' and status = 'published' order by as_of"
    ).fetchall()
    assert [day for day, _ in runs] == [first, last]
    for day, run_id in runs:
        assert f"{day} │ {run_id} " in out.stdout, out.stdout
