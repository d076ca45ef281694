"""A differently shaped job (text keys, categories, missing values, no history) on the same engine."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from flows.train import train_flow
from tests.helpers import TODAY, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_titanic_trains_scores_and_publishes_by_text_key(db_url, conn):
    trained = train_flow(job="titanic")
    assert trained["test"]["roc_auc"] > 0.75
    window = conn.execute(
        "select training_window from mlpipe.models where model_version = %s", [trained["model_version"]]
    ).fetchone()[0]
    assert window["kind"] == "stratified" and window["seed"] == 11, "the registry says how it was split"

    result = score("titanic", TODAY)

    total, missing_age = conn.execute(
        "select count(*), count(*) - count(age_years) from demo.titanic"
    ).fetchone()
    assert missing_age > 200, "the dataset really has missing values"
    assert result["rows_scored"] == total and result["rows_quarantined"] == 0
    rows = published(conn, "titanic")
    assert len(rows) == total
    assert all(isinstance(key, str) for key in rows)

    name = "Allen, Miss. Elisabeth Walton"
    out = subprocess.run(
        [sys.executable, "-m", "mlpipe.cli", "lookup", name, "--job", "titanic"],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    assert name in out.stdout and str(rows[name][0])[:8] in out.stdout
    assert re.search(r"reasons\s.*[a-z_]+ [+-]\d\.\d{3}, [a-z_]+ [+-]\d\.\d{3}", out.stdout), out.stdout


def test_a_missing_category_is_quarantined_when_the_spec_rejects_it(conn):
    conn.execute("update demo.titanic set sex = null where passenger like 'Allison%%'")
    result = score("titanic", TODAY)
    reasons = conn.execute(
        "select entity_id, reason from mlpipe.quarantine where run_id = %s order by 1", [result["run_id"]]
    ).fetchall()
    assert len(reasons) == 4 and {r[1] for r in reasons} == {"sex: missing"}
    assert all(r[0].startswith("Allison") for r in reasons)
    assert (
        result["rows_scored"] + len(reasons)
        == conn.execute("select count(*) from demo.titanic").fetchone()[0]
    )
