"""Metrics on a held-out split and the promotion decision."""

from __future__ import annotations

import numpy as np

from mlpipe.spec import JobSpec


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics that only need an ordering (what a baseline rule can be judged on)."""
    # scikit-learn takes a second or more to import: only where metrics are computed.
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(np.unique(labels)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
    }


def probability_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """Ranking metrics plus log loss, Brier score and a 10-bin reliability table."""
    from sklearn.metrics import brier_score_loss, log_loss

    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    bins = np.minimum((clipped * 10).astype(int), 9)
    reliability = [
        {
            "bin": int(b),
            "rows": int((bins == b).sum()),
            "mean_predicted": float(clipped[bins == b].mean()),
            "observed_rate": float(labels[bins == b].mean()),
        }
        for b in range(10)
        if (bins == b).any()
    ]
    return {
        **ranking_metrics(labels, probabilities),
        "log_loss": float(log_loss(labels, clipped, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, clipped)),
        "rows": int(len(labels)),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
        "reliability": reliability,
    }


def decide_promotion(spec: JobSpec, candidate: dict, baseline: dict, champion: dict | None) -> dict:
    """Apply the spec's rule: promote when the candidate beats the baseline and the champion by the
    required margins on the same out-of-time test set."""
    metric = spec.model.metric
    rule = spec.model.promotion
    reasons = []
    ok = candidate[metric] >= baseline[metric] + rule.min_gain_over_baseline
    reasons.append(
        f"{metric} {candidate[metric]:.4f} vs baseline {baseline[metric]:.4f} "
        f"(needs +{rule.min_gain_over_baseline}): {'met' if ok else 'not met'}"
    )
    if champion is not None:
        beats = candidate[metric] >= champion[metric] + rule.min_gain_over_champion
        reasons.append(
            f"{metric} {candidate[metric]:.4f} vs champion {champion[metric]:.4f} "
            f"(needs +{rule.min_gain_over_champion}): {'met' if beats else 'not met'}"
        )
        ok = ok and beats
    return {"decision": "promote" if ok else "keep_challenger", "metric": metric, "reasons": reasons}
