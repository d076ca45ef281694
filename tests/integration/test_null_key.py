"""A features row without a key is quarantined with its reason; the rest of the day is published."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, population, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

NULL_KEY_ROW = "\nunion all select null::bigint, 100.0, 'basic', true, 3, 4, 1.0, 0, 3, 0\n"


def churn_with_a_null_key(tmp_path: Path) -> str:
    """A copy of jobs/churn whose features SQL adds one row with a NULL customer_id."""
    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", Settings()).folder, folder)
    features = folder / "features.sql"
    features.write_text(features.read_text().rstrip() + NULL_KEY_ROW)
    return str(folder / "job.yaml")


def test_a_null_key_is_quarantined_and_the_others_published(conn, tmp_path):
    day = days_ago(1)
    # A bad row beside it, in the same (last) chunk: its key is still written as an integer.
    last = conn.execute(
        """update demo.customers set plan = 'platinum' where customer_id = (
               select max(c.customer_id) from demo.customers c
               where c.signup_at < now() - interval '30 days'
                   and not exists (select from demo.cancellations x where x.customer_id = c.customer_id))
           returning customer_id"""
    ).fetchone()[0]
    result = score(churn_with_a_null_key(tmp_path), day)

    expected = population(conn, day)
    assert (result["rows_scored"], result["rows_quarantined"]) == (expected - 1, 2)
    assert len(published(conn)) == expected - 1
    quarantined = conn.execute(
        "select entity_id, reason from mlpipe.quarantine where run_id = %s order by entity_id",
        [result["run_id"]],
    ).fetchall()
    assert quarantined[0] == (str(last), "plan: unknown category platinum")
    entity_id, reason = quarantined[1]
    assert entity_id is None
    assert reason.startswith("missing key") and "customer_id" in reason
    run = conn.execute(
        "select status, rows_quarantined from mlpipe.runs where run_id = %s", [result["run_id"]]
    ).fetchone()
    assert run == ("published", 2)
