"""Registry operations from the CLI: list, show, promote, rollback (with republish), diff; artifacts."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.train import train_flow
from mlpipe import registry
from mlpipe.db import connection
from mlpipe.errors import ArtifactError
from tests.helpers import days_ago, published, score
from tests.helpers import run_cli as mlpipe

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _second_version(conn) -> str:
    """Train again (churn-v2) and make sure it is not the champion, whatever the rule decided."""
    version = train_flow(job="churn", as_of=days_ago(7))["model_version"]  # other cutoffs: another model
    champion = registry.champion(conn, "churn")
    if champion.model_version == version:
        registry.set_alias(
            conn,
            "churn",
            "champion",
            registry.get(conn, "churn", model_version="churn-v1").model_id,
            "test setup",
        )
    return version


def test_list_show_and_diff_as_json(conn):
    second = _second_version(conn)
    listed = json.loads(mlpipe("models", "list", "--json").stdout)
    assert [m["model_version"] for m in listed] == [second, "churn-v1"]
    assert "champion" in listed[1]["aliases"]

    score("churn", days_ago(1))
    shown = json.loads(mlpipe("models", "show", "churn-v1", "--json").stdout)
    assert shown["artifact_sha256"] and shown["training_window"]["kind"] == "time"
    assert [p["as_of"] for p in shown["published"]] == [days_ago(1).isoformat()]
    assert shown["alias_history"][0]["changed_by"]

    diff = json.loads(mlpipe("models", "diff", "churn-v1", second, "--json").stdout)
    names = [row[0] for row in diff["differences"]]
    assert "test roc_auc" in names and "chosen params" in names
    table = mlpipe("models", "diff", "churn-v1", second)
    assert table.returncode == 0 and "test brier" in table.stdout


def test_promote_then_rollback_republishes_without_rescoring(conn):
    second = _second_version(conn)
    first_day = score("churn", days_ago(2))
    assert first_day["model_version"] == "churn-v1"

    out = mlpipe("models", "promote", second, "--reason", "better on the new cohort")
    assert out.returncode == 0, out.stderr
    bad_day = score("churn", days_ago(1))
    assert bad_day["model_version"] == second
    assert {r[3] for r in published(conn).values()} == {second}

    out = mlpipe("models", "rollback", "--reason", "complaints about the new scores", "--republish")
    assert out.returncode == 0, out.stderr
    assert f"now shows {days_ago(2)}" in out.stdout
    rows = published(conn)
    assert {r[3] for r in rows.values()} == {"churn-v1"}
    assert {r[5] for r in rows.values()} == {first_day["run_id"]}
    assert registry.champion(conn, "churn").model_version == "churn-v1"
    history = registry.alias_history(conn, "churn")
    assert history[0]["reason"] == "rollback: complaints about the new scores"
    assert history[0]["previous"] == second and "(mlpipe cli)" in history[0]["changed_by"]

    # the next run uses the restored champion, and the newest day moves the view forward again
    again = score("churn", days_ago(1))
    assert again["model_version"] == "churn-v1" and again["view_moved"]


def test_rollback_without_history_is_a_clear_error(db_url):
    out = mlpipe("models", "rollback", "--reason", "x", "--job", "titanic")
    assert out.returncode == 1 and "no earlier champion to roll back to" in out.stderr


def test_a_modified_artifact_file_is_refused(conn, tmp_path):
    champion = registry.champion(conn, "churn")
    copy = tmp_path / "copy.bin"
    shutil.copy(champion.artifact_uri, copy)
    conn.execute(
        "update mlpipe.models set artifact_uri = %s where model_id = %s", [str(copy), champion.model_id]
    )
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match="does not match its registered sha256"):
        score("churn", days_ago(1))
    with connection(conn.info.dsn) as c:
        assert c.execute("select count(*) from mlpipe.runs where kind = 'score'").fetchone()[0] == 0
