"""Same data, spec and seed give the same artifact; same model, data and day give the same scores."""

from __future__ import annotations

from datetime import date

import pytest

from mlpipe import registry, train
from mlpipe.db import connection
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.model]


@pytest.mark.parametrize("job", ["churn", "titanic"])
def test_retraining_on_the_same_data_gives_the_same_artifact(db_url, job):
    settings = Settings()
    with connection(db_url) as conn:
        original = registry.champion(conn, job)  # trained by the template fixture, as of today
        again = train.train(conn, settings, load_job(job, settings), date.today()).model
    assert again.model_version != original.model_version
    assert again.algorithm == original.algorithm
    assert again.artifact_sha256 == original.artifact_sha256
    assert again.calibration == original.calibration


@pytest.mark.usefixtures("prefect_api")
def test_scoring_the_same_day_twice_gives_bit_identical_scores(conn):
    score("churn", days_ago(4))
    first = {k: v[:3] for k, v in published(conn).items()}
    score("churn", days_ago(4))
    assert {k: v[:3] for k, v in published(conn).items()} == first
