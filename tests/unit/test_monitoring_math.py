"""Drift and performance arithmetic on histograms, against scikit-learn and hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from mlpipe import drift, performance
from mlpipe.performance import SCORE_BINS, Bins


def _bins(scores: np.ndarray, labels: np.ndarray) -> Bins:
    # The same binning as the SQL: width_bucket(score, 0, 1, SCORE_BINS), the top edge in the last bin.
    index = np.minimum((scores * SCORE_BINS).astype(int), SCORE_BINS - 1)
    return Bins(
        n=np.bincount(index, minlength=SCORE_BINS).astype(float),
        score_sum=np.bincount(index, scores, SCORE_BINS),
        positives=np.bincount(index, labels, SCORE_BINS),
        log_loss_sum=-float(np.sum(labels * np.log(scores) + (1 - labels) * np.log(1 - scores))),
        brier_sum=float(np.sum((scores - labels) ** 2)),
    )


def test_realized_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    scores = rng.beta(1, 6, 50_000)
    labels = (rng.random(50_000) < scores).astype(float)
    figures = performance.realized(_bins(scores, labels))
    assert figures["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-3)
    assert figures["roc_auc_lo"] < figures["roc_auc"] < figures["roc_auc_hi"]
    assert figures["pr_auc"] == pytest.approx(average_precision_score(labels, scores), abs=2e-3)
    assert figures["log_loss"] == pytest.approx(log_loss(labels, scores), rel=1e-9)
    assert figures["brier"] == pytest.approx(brier_score_loss(labels, scores), rel=1e-9)
    assert sum(b["n"] for b in figures["calibration"]) == 50_000


def test_estimated_auc_of_calibrated_scores_is_close_to_realized():
    rng = np.random.default_rng(5)
    scores = rng.beta(1, 4, 200_000)
    labels = (rng.random(200_000) < scores).astype(float)
    estimate = performance.estimated(_bins(scores, labels))
    assert estimate["estimated_roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=0.01)
    assert estimate["estimated_positive_rate"] == pytest.approx(labels.mean(), abs=0.01)


def test_one_class_days_and_empty_days_say_why_there_is_no_auc():
    scores = np.array([0.2, 0.4, 0.6])
    one_class = performance.realized(_bins(scores, np.zeros(3)))
    assert "roc_auc" not in one_class and "every outcome that day is negative" in one_class["unavailable"]
    empty = performance.realized(_bins(np.array([]), np.array([])))
    assert empty["unavailable"] == "no outcomes for the entities scored that day"


def test_numeric_bins_hold_missing_below_inner_and_above():
    reference = drift.numeric_reference(np.arange(100, dtype=float))
    counts = drift.count(reference, np.array([np.nan, -5.0, 0.0, 50.0, 99.0, 150.0]))
    assert counts[drift.MISSING] == 1 and counts[1] == 1 and counts[-1] == 1
    assert counts[2:-1].sum() == 3  # 0 and 99 are the edges: inside, not out of range
    assert sum(reference["counts"]) == 100 and len(reference["counts"]) == drift.size(reference)


def test_numeric_counts_match_half_open_bins_with_a_closed_last_one():
    rng = np.random.default_rng(3)
    reference = drift.numeric_reference(rng.normal(size=5000))
    edges = np.asarray(reference["edges"])
    # Values on every edge, between them, out of range on both sides, infinite, missing, in a strided
    # column as a row-major chunk matrix holds them.
    values = np.concatenate([edges, rng.normal(size=2000) * 2, [np.inf, -np.inf, np.nan, np.nan]])
    column = np.stack([values, values], axis=1)[:, 0]
    expected = [np.isnan(values).sum(), (values < edges[0]).sum()]
    expected += [
        ((values >= lo) & (values < hi)).sum() for lo, hi in zip(edges[:-2], edges[1:-1], strict=True)
    ]
    expected += [((values >= edges[-2]) & (values <= edges[-1])).sum(), (values > edges[-1]).sum()]
    assert drift.count(reference, column).tolist() == [int(e) for e in expected]


def test_categorical_bins_hold_missing_and_unknown():
    reference = drift.categorical_reference(np.array(["a", "b", "a"], dtype=object), ["a", "b"])
    counts = drift.count(reference, np.array(["a", None, "zzz", "b", "b"], dtype=object))
    assert counts.tolist() == [1, 1, 1, 2]
    assert drift.unknown_share(reference, counts) == pytest.approx(0.2)
    assert drift.missing_share(counts) == pytest.approx(0.2)
    # A chunk's column as read (Arrow-backed strings), NaN in an object array, and all missing: same bins.
    as_read = pd.Series(["a", None, "zzz", "b", "b"], dtype="str")
    assert drift.count(reference, as_read).tolist() == [1, 1, 1, 2]
    assert drift.count(reference, np.array(["b", np.nan], dtype=object)).tolist() == [1, 0, 0, 1]
    assert drift.count(reference, np.array([None, None], dtype=object)).tolist() == [2, 0, 0, 0]


def test_drift_statistics_are_zero_for_the_same_shape_and_large_for_a_shift():
    same = [100, 200, 300]
    assert drift.psi(same, [10, 20, 30]) == pytest.approx(0.0, abs=1e-3)
    assert drift.js_distance(same, same) == pytest.approx(0.0, abs=1e-6)
    assert drift.psi([300, 200, 100], same) > 0.25
    assert 0.0 < drift.js_distance([300, 200, 100], same) < 1.0
    assert [drift.level(v, 0.1, 0.25) for v in (0.05, 0.1, 0.3, None)] == ["ok", "warn", "fail", "ok"]
