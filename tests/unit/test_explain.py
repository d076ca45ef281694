"""Reasons per row: the additive surrogate follows the model, and the JSON is valid, ordered, fixed-width."""

from __future__ import annotations

import json

import numpy as np

from mlpipe.explain import ReasonWriter, Surrogate, feature_groups


def _world(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    x[::20, 2] = np.nan  # missing values get their own step
    margin = 1.5 * x[:, 0] + np.sin(2 * x[:, 1]) + np.where(np.isnan(x[:, 2]), 2.0, 0.0)
    return x, margin  # column 3 is irrelevant


def test_surrogate_recovers_an_additive_model():
    x, margin = _world(60_000)
    surrogate = Surrogate.fit(
        x[:40_000], margin[:40_000], ["a", "b", "c", "d"], (x[40_000:], margin[40_000:])
    )
    assert surrogate.r2 > 0.97
    contributions = surrogate.contributions(x[40_000:])
    assert contributions.shape == (20_000, 4) and contributions.dtype == np.float32
    assert np.abs(contributions[:, 3]).max() < 0.1, "the irrelevant feature explains nothing"
    missing = np.isnan(x[40_000:, 2])
    assert contributions[missing, 2].mean() > 1.5 > contributions[~missing, 2].mean()
    low, high = np.argsort(x[40_000:, 0])[[100, -100]]
    assert contributions[high, 0] > 2 > -2 > contributions[low, 0], "follows the slope of a"


def test_surrogate_round_trips_and_groups_one_hot_inputs():
    x, margin = _world(5_000)
    columns = ["a", "plan=basic", "plan=premium", "d"]
    surrogate = Surrogate.fit(x, margin, columns, (x, margin))
    assert surrogate.features == ["a", "plan", "d"] == list(dict.fromkeys(feature_groups(columns)))
    again = Surrogate.from_dict(json.loads(json.dumps(surrogate.as_dict())))
    assert np.array_equal(again.contributions(x), surrogate.contributions(x))


def test_reasons_are_the_largest_contributions_in_order_as_valid_json():
    writer = ReasonWriter(["tenure_days", "plan", "f"], 2)
    contributions = np.array([[0.5, -1.2, 0.1], [0.0, 0.0, 0.0], [12.0, -0.0004, 3.14159]], dtype=np.float32)
    encoded = writer.encode(contributions)
    assert encoded.shape == (3, writer.width)
    rows = [json.loads(row.tobytes()) for row in encoded]
    assert rows[0] == [
        {"feature": "plan", "contribution": -1.2},
        {"feature": "tenure_days", "contribution": 0.5},
    ]
    assert [r["contribution"] for r in rows[1]] == [0.0, 0.0]
    assert rows[2] == [
        {"feature": "tenure_days", "contribution": 9.999},
        {"feature": "f", "contribution": 3.142},
    ]
