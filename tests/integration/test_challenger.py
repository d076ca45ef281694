"""Challenger runs: shadow scoring for analysts, and batch A/B in the published table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest
import yaml
from psycopg import sql

from flows.train import train_flow
from mlpipe import registry
from mlpipe.chunks import challenger_arm
from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]
CHURN = Path(__file__).parents[2] / "jobs" / "churn"


def churn_with(tmp_path: Path, **outputs) -> str:
    folder = tmp_path / "churn"
    shutil.copytree(CHURN, folder)
    spec = yaml.safe_load((folder / "job.yaml").read_text())
    spec["outputs"].update(outputs)
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # feature order matters
    return str(folder / "job.yaml")


@pytest.fixture
def challenger(conn) -> str:
    """churn-v2 as the challenger, churn-v1 the champion."""
    version = train_flow(job="churn", as_of=days_ago(7))["model_version"]  # other cutoffs: another model
    v1 = registry.get(conn, "churn", model_version="churn-v1")
    registry.set_alias(conn, "churn", "champion", v1.model_id, "test setup")
    registry.set_alias(
        conn, "churn", "challenger", registry.get(conn, "churn", model_version=version).model_id, "test setup"
    )
    return version


def _shadow(conn) -> dict:
    rows = conn.execute(
        "select entity_id, score, model_version, as_of from predictions.churn_shadow"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_shadow_scores_everyone_with_the_challenger_for_analysts_only(conn, tmp_path, challenger):
    job = churn_with(tmp_path, shadow=True)
    result = score(job, days_ago(1))

    live, shadow = published(conn), _shadow(conn)
    assert set(shadow) == set(live)
    assert {r[1] for r in shadow.values()} == {challenger}
    assert {r[3] for r in live.values()} == {"churn-v1"}, "readers still see the champion only"
    assert conn.execute(
        "select challenger_mode, challenger_model_id is not null from mlpipe.runs where run_id = %s",
        [result["run_id"]],
    ).fetchone() == ("shadow", True)
    with conn.transaction(force_rollback=True):
        conn.execute("set local role mlpipe_analyst")
        conn.execute("select count(*) from predictions.churn_shadow")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction(force_rollback=True):
        conn.execute("set local role mlpipe_reader")
        conn.execute("select count(*) from predictions.churn_shadow")

    score(job, days_ago(1))  # re-running the day replaces the shadow partition too
    assert len(_shadow(conn)) == len(live)


def test_batch_ab_gives_a_stable_share_to_the_challenger(conn, tmp_path, challenger):
    job = churn_with(tmp_path, shadow=True, challenger_share=0.3)
    score(job, days_ago(2))
    day_one = published(conn)
    champion_ids = {k for k, v in day_one.items() if v[3] == "churn-v1"}
    challenger_ids = {k for k, v in day_one.items() if v[3] == challenger}
    assert champion_ids | challenger_ids == set(day_one)
    assert 0.22 < len(challenger_ids) / len(day_one) < 0.38
    shadow = _shadow(conn)
    assert all(day_one[k][0] == shadow[k][0] for k in challenger_ids), (
        "the arm publishes the challenger's score"
    )
    assert any(day_one[k][0] != shadow[k][0] for k in champion_ids)

    score(job, days_ago(1))
    day_two = published(conn)
    moved = {k for k in set(day_one) & set(day_two) if (k in challenger_ids) != (day_two[k][3] == challenger)}
    assert moved == set(), "an entity stays in its arm from day to day"
    keys = sorted(day_two)
    arm = challenger_arm(np.array(keys), 0.3)
    assert {k for k, a in zip(keys, arm, strict=True) if a} == {
        k for k in keys if day_two[k][3] == challenger
    }
    history = conn.execute(
        sql.SQL("select model_version, count(*) from predictions.churn_history group by 1 order by 1")
    ).fetchall()
    assert {v for v, _ in history} == {"churn-v1", challenger}


def test_without_a_challenger_the_run_goes_on_with_the_champion(conn, tmp_path):
    result = score(churn_with(tmp_path, shadow=True, challenger_share=0.2), days_ago(1))
    assert {r[3] for r in published(conn).values()} == {"churn-v1"}
    assert result["rows_scored"] > 0
