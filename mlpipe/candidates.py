"""Fitting candidates: a seeded randomized search per algorithm inside a deadline, then calibration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mlpipe import algorithms, artifacts
from mlpipe.evaluate import probability_metrics
from mlpipe.features import categorical_columns
from mlpipe.spec import Candidate, JobSpec
from mlpipe.trainingset import TrainingSet

# Calibration is applied only when it lowers the Brier score on held-out rows by this share.
MIN_BRIER_GAIN = 0.005


@dataclass
class SearchResult:
    model: artifacts.ScoringModel
    params: dict
    validation: dict
    tried: list[dict] = field(default_factory=list)


def configurations(candidate: Candidate, iterations: int, seed: int) -> list[dict]:
    """The candidate's own params first, then seeded random draws from its search space."""
    configs = [dict(candidate.params)]
    rng = np.random.default_rng(seed)
    space = candidate.search
    attempts = 0
    while space and len(configs) < iterations and attempts < 50 * iterations:
        attempts += 1
        draw = {**candidate.params, **{k: values[rng.integers(len(values))] for k, values in space.items()}}
        if draw not in configs:
            configs.append(draw)
    return configs


def search(
    candidate: Candidate, spec: JobSpec, data: TrainingSet, columns: list[str], deadline: float
) -> SearchResult:
    """Try the candidate's configurations (at least one) until the deadline; keep the best on
    validation by the job's metric."""
    x_train, y_train = data.part("train")
    x_valid, y_valid = data.part("validation")
    signs = spec.monotone_columns()
    monotone = [signs.get(c, 0) for c in columns]
    metric = spec.model.metric
    algorithm = algorithms.get(candidate.algorithm)
    inputs = algorithms.FitInput(
        x_train,
        y_train,
        x_valid,
        y_valid,
        columns,
        spec.training.seed,
        monotone,
        categorical_columns(spec),
        deadline,
    )
    best: SearchResult | None = None
    tried = []
    for params in configurations(candidate, spec.model.search_iterations, spec.training.seed):
        if best is not None and time.monotonic() > deadline:
            break
        started = time.monotonic()
        model = algorithm.fit(params, inputs)
        validation = probability_metrics(y_valid, model.predict_proba(x_valid))
        tried.append(
            {"params": params, metric: validation[metric], "seconds": round(time.monotonic() - started, 2)}
        )
        if best is None or validation[metric] > best.validation[metric]:
            best = SearchResult(model, params, validation)
    best.tried = tried
    return best


def calibrate(
    model: artifacts.ScoringModel, data: TrainingSet, seed: int
) -> tuple[artifacts.ScoringModel, dict]:
    """Fit Platt and isotonic maps on one half of the validation split, judge them on the other, and
    apply the better one (refit on all of validation) only if it lowers the Brier score."""
    from sklearn.metrics import brier_score_loss  # scikit-learn is imported where training uses it

    x_valid, y_valid = data.part("validation")
    raw = model.predict_proba(x_valid)
    halves = np.random.default_rng(seed).permutation(len(y_valid)) % 2 == 0
    fit_part, judge_part = halves, ~halves
    before = float(brier_score_loss(y_valid[judge_part], raw[judge_part]))
    options = {
        name: maker(raw[fit_part], y_valid[fit_part])
        for name, maker in (("sigmoid", platt), ("isotonic", _isotonic))
    }
    after = {
        name: float(brier_score_loss(y_valid[judge_part], c.apply(raw[judge_part])))
        for name, c in options.items()
    }
    method = min(after, key=after.get)
    report = {
        "brier_before": before,
        "brier_after": after,
        "chosen": "none",
        "reliability_before": probability_metrics(y_valid, raw)["reliability"],
    }
    if after[method] > before * (1 - MIN_BRIER_GAIN):
        return model, report
    calibration = (platt if method == "sigmoid" else _isotonic)(raw, y_valid)
    report["chosen"] = method
    return artifacts.CalibratedModel(model, calibration), report


def platt(scores: np.ndarray, labels: np.ndarray) -> artifacts.Calibration:
    """A Platt map (logistic on the scores' log-odds) from scores to the observed rate."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1e6, max_iter=1000).fit(artifacts.logit(scores).reshape(-1, 1), labels)
    return artifacts.Calibration(
        "sigmoid", {"a": float(fitted.coef_[0][0]), "b": float(fitted.intercept_[0])}
    )


def _isotonic(scores: np.ndarray, labels: np.ndarray) -> artifacts.Calibration:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, labels)
    return artifacts.Calibration(
        "isotonic", {"x": fitted.X_thresholds_.tolist(), "y": fitted.y_thresholds_.tolist()}
    )
