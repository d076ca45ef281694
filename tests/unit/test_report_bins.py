"""Report helpers that need no database: bin labels from a reference, percentiles from counts."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipe import drift
from mlpipe.report import bin_labels, histogram_quantiles


def test_bin_labels_follow_the_count_layout():
    numeric = drift.numeric_reference(np.arange(100, dtype=float))
    labels = bin_labels(numeric)
    assert len(labels) == drift.size(numeric)
    assert labels[:2] == ["missing", "< 0"] and labels[-1] == "> 99" and labels[-2].endswith(", 99]")
    categorical = drift.categorical_reference(np.array(["a", "b"], dtype=object), ["a", "b", "c"])
    assert bin_labels(categorical) == ["missing", "unknown", "a", "b", "c"]


def test_percentiles_from_score_counts_are_close_to_the_values():
    scores = np.random.default_rng(3).beta(2, 8, 50_000)
    reference = drift.score_reference(scores)
    found = histogram_quantiles(reference["counts"], reference["edges"])
    for q in (10, 50, 90):
        assert found[f"p{q}"] == pytest.approx(np.percentile(scores, q), abs=0.01)
    assert found["mean"] == pytest.approx(scores.mean(), abs=0.01)
    assert histogram_quantiles([0] * 23, drift.SCORE_EDGES) is None
