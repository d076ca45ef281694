"""A rollout step's verdict from its figures (no database): leading signals, bake days, matured
outcomes and non-inferiority of ROC AUC with its interval. See mlpipe.rollout for the rules."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mlpipe import performance
from mlpipe.spec import Rollout as RolloutPlan

PASS, WAIT, FAIL = "pass", "wait", "fail"
Z = 1.96  # two-sided 95%: the non-inferiority test is one-sided at 2.5%


@dataclass
class Check:
    """A step's verdict (pass, wait or fail), the reasons in words, and the figures behind them."""

    verdict: str
    reasons: list[str]
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def judge(plan: RolloutPlan, days: list[dict], arms: list[dict], psi: float | None) -> Check:
    """Leading signals first (any day), then bake days, matured outcomes and non-inferiority."""
    figures: dict = {"days": len(days), "first_day": days[0]["as_of"].isoformat(), "score_psi": psi}
    failures = guard_failures(plan, days, arms, psi, figures)
    if failures:
        return Check(FAIL, failures, figures)
    if len(days) < plan.bake_days:
        return Check(WAIT, [f"baked {len(days)} of {plan.bake_days} days"], figures)
    matured = [a for a in arms if a["matured"] and a["roc_auc"] is not None and a["positives"]]
    both = {a["as_of"] for a in matured if a["arm"] == "champion"} & {
        a["as_of"] for a in matured if a["arm"] == "challenger"
    }
    champion = [a for a in matured if a["arm"] == "champion" and a["as_of"] in both]
    challenger = [a for a in matured if a["arm"] == "challenger" and a["as_of"] in both]
    outcomes = {"champion": sum(a["n"] for a in champion), "challenger": sum(a["n"] for a in challenger)}
    figures.update(matured_days=len(both), outcomes=outcomes)
    short = {arm: n for arm, n in outcomes.items() if n < plan.min_matured_outcomes}
    if short:
        return Check(
            WAIT,
            [
                f"{', '.join(f'{arm} arm has {n}' for arm, n in short.items())} of "
                f"{plan.min_matured_outcomes} matured outcomes over {len(both)} matured days"
            ],
            figures,
        )
    result = non_inferiority(champion, challenger, plan.max_metric_loss)
    figures["roc_auc"] = result
    sign = ">" if result["passed"] else "<="
    words = (
        f"challenger roc_auc {result['challenger']:.3f} vs champion {result['champion']:.3f} over "
        f"{len(both)} matured days ({outcomes['challenger']:,}/{outcomes['champion']:,} outcomes): "
        f"lower bound of the difference {result['lower']:+.3f} {sign} -{plan.max_metric_loss:g}"
    )
    return Check(PASS if result["passed"] else FAIL, [words], figures)


def guard_failures(
    plan: RolloutPlan, days: list[dict], arms: list[dict], psi: float | None, figures: dict
) -> list[str]:
    """The leading signals crossed, in words (figures are added to `figures`)."""
    guard, failures = plan.guard, []
    estimated = {
        arm: [a["estimated"] for a in arms if a["arm"] == arm and a["estimated"] is not None]
        for arm in ("champion", "challenger")
    }
    if estimated["champion"] and estimated["challenger"]:
        loss = float(np.mean(estimated["champion"]) - np.mean(estimated["challenger"]))
        figures["estimated_loss"] = loss
        if loss > guard.max_estimated_loss:
            failures.append(f"estimated roc_auc loss {loss:.3f} > {guard.max_estimated_loss:g}")
    if psi is not None and psi > guard.max_score_psi:
        failures.append(f"challenger score PSI {psi:.3f} > {guard.max_score_psi:g}")
    rates = [d["rows_quarantined"] / d["population"] for d in days if d["population"]]
    if rates:
        figures["quarantine_rate"] = max(rates)
        if max(rates) > guard.max_quarantine_rate:
            failures.append(f"quarantine rate {max(rates):.2%} > {guard.max_quarantine_rate:.2%}")
    return failures


def pooled_auc(days: list[dict]) -> tuple[float, float]:
    """(AUC, variance) of an arm over matured days: weighted by positives x negatives, the variance
    a weighted mean of the days' (overlapping days must not narrow the interval)."""
    weights, values, variances = [], [], []
    for day in days:
        positives, negatives = day["positives"], day["n"] - day["positives"]
        weights.append(positives * negatives)
        values.append(day["roc_auc"])
        variances.append(performance.auc_variance(day["roc_auc"], positives, negatives))
    return float(np.average(values, weights=weights)), float(np.average(variances, weights=weights))


def non_inferiority(champion: list[dict], challenger: list[dict], margin: float) -> dict:
    """Whether the challenger's AUC is no more than `margin` below the champion's, with 95% confidence."""
    a, var_a = pooled_auc(champion)
    b, var_b = pooled_auc(challenger)
    difference, se = b - a, float(np.sqrt(var_a + var_b))
    lower = difference - Z * se
    return {
        "champion": a,
        "challenger": b,
        "difference": difference,
        "lower": lower,
        "upper": difference + Z * se,
        "margin": margin,
        "passed": bool(lower > -margin),
    }
