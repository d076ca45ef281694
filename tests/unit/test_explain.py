"""Reasons per row: the additive surrogate follows the model, and the JSON is valid, ordered, fixed-width."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlpipe.errors import ArtifactError
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


def test_reasons_are_the_largest_contributions_in_order_as_codes():
    writer = ReasonWriter(["tenure_days", "plan", "f"], 2)
    contributions = np.array(
        [[0.5, -1.2, 0.1], [0.0, 0.0, 0.0], [12.0, -0.0004, 3.14159], [0.3, -0.3, 0.3]], dtype=np.float32
    )
    codes = writer.encode(contributions)
    assert codes.dtype == np.int16 and codes.shape == (4, 2, 2)
    # [position in the names, 1-based; contribution in thousandths], largest by size first.
    assert codes[0].tolist() == [[2, -1200], [1, 500]]
    assert codes[1].tolist() == [[1, 0], [2, 0]], "ties: the earlier feature first"
    assert codes[2].tolist() == [[1, 9999], [3, 3142]], "clipped to +-9.999, rounded to thousandths"
    assert codes[3].tolist() == [[1, 300], [2, -300]]


def test_reason_codes_count_in_the_jobs_names_and_match_a_sort():
    writer = ReasonWriter(["b", "d"], 3, names=["a", "b", "c", "d"])
    assert writer.k == 2
    assert writer.encode(np.array([[0.1, -0.2]], dtype=np.float32)).tolist() == [[[4, -200], [2, 100]]]
    with pytest.raises(ArtifactError, match="features the job no longer has"):
        ReasonWriter(["b", "e"], 1, names=["a", "b"])

    rng = np.random.default_rng(3)
    contributions = np.round(rng.normal(size=(5_000, 12)), 1).astype(np.float32)  # many ties
    codes = ReasonWriter([f"x{i}" for i in range(12)], 4).encode(contributions)
    order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :4]
    assert np.array_equal(codes[:, :, 0], order + 1)
    assert np.array_equal(codes[:, :, 1], np.rint(np.take_along_axis(contributions, order, 1) * 1000))


def test_contributions_bin_like_a_binary_search():
    x, margin = _world(20_000)
    x[:50, 1] = np.inf  # beyond every edge: the last bin, as searchsorted puts it
    surrogate = Surrogate.fit(x, margin, ["a", "b", "c", "d"], (x, margin))
    expected = np.zeros((4, len(x)), dtype=np.float32)
    for j, (edges, values) in enumerate(zip(surrogate._search_edges, surrogate._values32, strict=True)):
        expected[j] = values[np.searchsorted(edges, x[:, j], side="right")]
    assert np.array_equal(surrogate.contributions(x), expected.T)
