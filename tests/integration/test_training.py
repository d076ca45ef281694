"""Training through the real flow, the registry, and train/serve consistency."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from flows.train import train_flow
from mlpipe import registry
from mlpipe.db import connection
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.train import build_training_set, cutoffs_for
from tests.helpers import published, score

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


def test_rows_scored_in_evaluation_and_in_daily_scoring_get_identical_scores(db_url, conn):
    settings = Settings()
    spec = load_job("churn", settings)
    with connection(db_url) as c:
        champion = registry.champion(c, "churn")
        data = build_training_set(c, spec, champion.trained_as_of, settings.chunk_rows)
    test_cutoff = date.fromisoformat(champion.training_window["test"])
    test_rows = data.split == "test"
    evaluated = dict(
        zip(
            data.frame.loc[test_rows, "customer_id"],
            champion.load().predict(data.matrix[test_rows]),
            strict=True,
        )
    )

    score("churn", test_cutoff)
    served = {key: row[0] for key, row in published(conn).items()}

    assert len(evaluated) > 100
    assert set(evaluated) <= set(served)
    mismatched = [k for k, v in evaluated.items() if served[k] != v]
    assert mismatched == [], f"{len(mismatched)} rows scored differently, e.g. {mismatched[:3]}"
    assert np.isfinite(list(served.values())).all()
