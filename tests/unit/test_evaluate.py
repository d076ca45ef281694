"""The promotion rule: beat the baseline and the champion by the spec's margins, on the same test set."""

from __future__ import annotations

import pytest

from mlpipe.evaluate import decide_promotion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, Promotion, load_job


def _spec(metric: str = "roc_auc", **rule) -> JobSpec:
    spec = load_job("churn", Settings())
    model = spec.model.model_copy(update={"metric": metric, "promotion": Promotion(**rule)})
    return spec.model_copy(update={"model": model})


def test_first_model_is_promoted_when_it_beats_the_baseline_by_the_margin():
    decision = decide_promotion(
        _spec(min_gain_over_baseline=0.02), {"roc_auc": 0.80}, {"roc_auc": 0.70}, None
    )
    assert decision["decision"] == "promote" and decision["metric"] == "roc_auc"
    assert decision["reasons"] == ["roc_auc 0.8000 vs baseline 0.7000 (needs +0.02): met"]


def test_a_gain_below_the_baseline_margin_keeps_it_a_challenger():
    decision = decide_promotion(
        _spec(min_gain_over_baseline=0.05), {"roc_auc": 0.74}, {"roc_auc": 0.70}, None
    )
    assert decision["decision"] == "keep_challenger"
    assert decision["reasons"][0].endswith("not met")


def test_exactly_the_margin_is_enough():
    decision = decide_promotion(
        _spec(min_gain_over_baseline=0.25, min_gain_over_champion=0.25),
        {"roc_auc": 0.75},
        {"roc_auc": 0.5},
        {"roc_auc": 0.5},
    )
    assert decision["decision"] == "promote"


@pytest.mark.parametrize(("challenger", "expected"), [(0.81, "promote"), (0.805, "keep_challenger")])
def test_the_champion_must_be_beaten_by_its_own_margin(challenger, expected):
    spec = _spec(min_gain_over_baseline=0.0, min_gain_over_champion=0.01)
    decision = decide_promotion(spec, {"roc_auc": challenger}, {"roc_auc": 0.6}, {"roc_auc": 0.80})
    assert decision["decision"] == expected
    assert len(decision["reasons"]) == 2 and "vs champion 0.8000 (needs +0.01)" in decision["reasons"][1]


def test_the_specs_metric_decides_not_the_other_one():
    candidate, baseline = {"roc_auc": 0.60, "pr_auc": 0.50}, {"roc_auc": 0.70, "pr_auc": 0.30}
    assert decide_promotion(_spec("pr_auc"), candidate, baseline, None)["decision"] == "promote"
    assert decide_promotion(_spec("roc_auc"), candidate, baseline, None)["decision"] == "keep_challenger"
