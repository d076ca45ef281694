"""Train/serve consistency: a row gets the same score in evaluation and in daily scoring."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from mlpipe import registry
from mlpipe.db import connection
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.trainingset import build_training_set
from tests.helpers import published, score

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("prefect_api")]


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
            champion.load().predict_proba(data.matrix[test_rows]),
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
