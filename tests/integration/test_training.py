"""Training through the real flow, the registry, and train/serve consistency."""

from __future__ import annotations

from datetime import date

import pytest

from flows.train import train_flow
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.trainingset import cutoffs_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_training_registers_a_verified_version_with_its_lineage(conn):
    result = train_flow(job="churn")

    model = conn.execute(
        """select model_version, artifact_sha256, metrics, feature_schema, training_window, row_counts,
                  library_versions, promotion from mlpipe.models where model_version = %s""",
        [result["model_version"]],
    ).fetchone()
    version, sha, metrics, schema, window, counts, versions, promotion = model
    assert version == "churn-v2"  # the template holds v1
    assert len(sha) == 64
    assert set(metrics["test"]) >= {"roc_auc", "pr_auc", "log_loss", "brier", "reliability"}
    assert metrics["test"]["roc_auc"] > metrics["baseline"]["roc_auc"] + 0.02, (
        "the model clearly beats the rule"
    )
    assert schema["columns"][:2] == ["tenure_days", "plan=basic"]
    spec = load_job("churn", Settings())
    assert window["cutoffs"] == [c.isoformat() for c in cutoffs_for(spec, date.today())]
    assert window["test"] == window["cutoffs"][-1] and window["validation"] == window["cutoffs"][-2]
    assert counts["train"] > counts["validation"] > 0 and counts["test"] > 0
    assert set(versions) >= {"xgboost", "scikit-learn", "numpy", "python"}
    assert promotion["decision"] in {"promote", "keep_challenger"}
    assert any("champion" in reason for reason in promotion["reasons"]), "the champion was re-evaluated"
    alias = "champion" if result["promoted"] else "challenger"
    history = conn.execute(
        "select alias, previous_model_id is not null, reason from mlpipe.alias_history "
        "where job = 'churn' order by change_id desc limit 1"
    ).fetchone()
    assert history[0] == alias and "training run" in history[2]


def test_cutoffs_are_matured_and_time_ordered():
    spec = load_job("churn", Settings())
    today = date(2026, 11, 22)
    cutoffs = cutoffs_for(spec, today)
    assert len(cutoffs) == spec.training.cutoffs
    assert cutoffs == sorted(cutoffs)
    assert all((today - c).days >= spec.training.horizon_days for c in cutoffs)
