"""Behaviour of the demo champion: direction, invariance, minimum function on hand-written cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipe import registry
from mlpipe.db import connection
from mlpipe.extract import read_features
from mlpipe.features import to_matrix
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.model]


@pytest.fixture
def champion(db_url):
    spec = load_job("churn", Settings())
    with connection(db_url) as conn:
        version = registry.champion(conn, "churn")
        frame = read_features(conn, spec, days_ago(1))
    return spec, version, version.load(), frame


def test_more_failed_payments_never_lower_churn_risk(champion):
    spec, version, model, frame = champion
    base = model.predict_proba(to_matrix(frame, spec))
    for extra in (1, 2, 5):
        # everything else held equal: the same payments, more of them failed
        worse = frame.assign(payments_failed_90d=frame["payments_failed_90d"] + extra)
        moved = model.predict_proba(to_matrix(worse, spec)) - base
        safer = int((moved < -1e-9).sum())
        assert safer == 0, f"{safer} customers got safer with {extra} more failures"
    assert version.feature_schema["columns"], "the check ran on the registered model"


@pytest.mark.usefixtures("prefect_api")
def test_flipping_marketing_opt_in_in_the_source_barely_moves_published_scores(conn, champion):
    """End to end on an input the model receives and the spec declares invariant: the flip in
    demo.customers reaches the features the job reads, and the published scores hardly move."""
    spec, version, _, before_features = champion
    assert "is_marketing_opt_in" in version.feature_schema["columns"], "an input the model receives"
    score("churn", days_ago(1))
    before = {k: v[0] for k, v in published(conn).items()}
    conn.execute("update demo.customers set is_marketing_opt_in = not is_marketing_opt_in")
    after_features = read_features(conn, spec, days_ago(1))
    flipped = before_features.merge(after_features, on="customer_id", suffixes=("", "_after"))
    assert len(flipped) == len(before_features) > 100
    assert (flipped["is_marketing_opt_in"] != flipped["is_marketing_opt_in_after"]).all()

    score("churn", days_ago(1))
    after = {k: v[0] for k, v in published(conn).items()}
    assert after.keys() == before.keys()
    moved = np.abs(np.array([after[k] - before[k] for k in before]))
    assert np.quantile(moved, 0.99) <= spec.model.behaviour.invariant["is_marketing_opt_in"]


def test_flipping_marketing_opt_in_barely_moves_the_score(champion):
    spec, _, model, frame = champion
    base = model.predict_proba(to_matrix(frame, spec))
    flipped = model.predict_proba(
        to_matrix(frame.assign(is_marketing_opt_in=~frame["is_marketing_opt_in"]), spec)
    )
    assert np.quantile(np.abs(flipped - base), 0.99) <= spec.model.behaviour.invariant["is_marketing_opt_in"]


def test_hand_written_cases(champion):
    spec, _, model, _ = champion
    cases = pd.DataFrame(
        [
            # engaged, paying, long-standing premium customer
            dict(
                customer_id=1,
                tenure_days=600.0,
                plan="premium",
                is_marketing_opt_in=True,
                sessions_30d=12.0,
                sessions_prev_30d=11.0,
                days_since_last_session=1.0,
                support_tickets_30d=0.0,
                payments_90d=3.0,
                payments_failed_90d=0.0,
            ),
            # fading basic customer with failed payments and complaints
            dict(
                customer_id=2,
                tenure_days=200.0,
                plan="basic",
                is_marketing_opt_in=True,
                sessions_30d=0.0,
                sessions_prev_30d=6.0,
                days_since_last_session=40.0,
                support_tickets_30d=3.0,
                payments_90d=3.0,
                payments_failed_90d=2.0,
            ),
            # a new customer with no sessions yet: missing recency is imputed, not an error
            dict(
                customer_id=3,
                tenure_days=5.0,
                plan="standard",
                is_marketing_opt_in=False,
                sessions_30d=0.0,
                sessions_prev_30d=0.0,
                days_since_last_session=None,
                support_tickets_30d=0.0,
                payments_90d=1.0,
                payments_failed_90d=0.0,
            ),
        ]
    )
    engaged, fading, new = model.predict_proba(to_matrix(cases, spec))
    assert fading > 2 * engaged
    assert fading > spec.outputs.threshold > engaged
    assert 0.0 < new < 1.0
