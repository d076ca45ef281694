"""Fitting candidates: a seeded randomized search per algorithm inside a deadline, then calibration."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import xgboost as xgb
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mlpipe import artifacts
from mlpipe.evaluate import probability_metrics
from mlpipe.spec import Candidate, JobSpec

# Calibration is applied only when it lowers the Brier score on held-out rows by this share.
MIN_BRIER_GAIN = 0.005


@dataclass
class SearchResult:
    model: artifacts.ScoringModel
    params: dict
    validation: dict
    tried: list[dict] = field(default_factory=list)


class _Deadline(xgb.callback.TrainingCallback):
    """Stop boosting when the candidate's share of the time budget runs out."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def after_iteration(self, model, epoch, evals_log) -> bool:
        return time.monotonic() > self.deadline


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


def fit(
    algorithm: str,
    params: dict,
    x_train,
    y_train,
    x_valid,
    y_valid,
    columns: list[str],
    seed: int,
    monotone: list[int],
    deadline: float,
) -> artifacts.ScoringModel:
    """Fit one configuration; boosted trees stop early on the validation split."""
    params = dict(params)
    if algorithm == "logistic_regression":
        pipeline = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=float(params.get("C", 1.0)), max_iter=2000),
        )
        pipeline.fit(x_train, y_train)
        imputer, scaler, logistic = (step for _, step in pipeline.steps)
        return artifacts.LinearModel(
            columns=columns,
            impute=imputer.statistics_.astype(np.float64),
            mean=scaler.mean_.astype(np.float64),
            scale=scaler.scale_.astype(np.float64),
            coef=logistic.coef_[0].astype(np.float64),
            intercept=float(logistic.intercept_[0]),
        )
    if algorithm == "hist_gradient_boosting":
        estimator = HistGradientBoostingClassifier(
            learning_rate=float(params.get("learning_rate", 0.1)),
            max_iter=int(params.get("max_iter", 300)),
            max_leaf_nodes=int(params.get("max_leaf_nodes", 31)),
            min_samples_leaf=int(params.get("min_samples_leaf", 20)),
            l2_regularization=float(params.get("l2_regularization", 0.0)),
            monotonic_cst=monotone,
            early_stopping=True,
            n_iter_no_change=int(params.get("n_iter_no_change", 20)),
            random_state=seed,
        )
        estimator.fit(x_train, y_train, X_val=x_valid, y_val=y_valid)
        return artifacts.SklearnModel(columns=columns, estimator=estimator)
    rounds = int(params.pop("num_boost_round", 500))
    patience = int(params.pop("early_stopping_rounds", 30))
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "seed": seed,
            "monotone_constraints": "(" + ",".join(str(m) for m in monotone) + ")",
            **params,
        },
        xgb.DMatrix(x_train, label=y_train),
        num_boost_round=rounds,
        evals=[(xgb.DMatrix(x_valid, label=y_valid), "validation")],
        early_stopping_rounds=patience,
        callbacks=[_Deadline(deadline)],
        verbose_eval=False,
    )
    if booster.best_iteration is not None and booster.best_iteration + 1 < booster.num_boosted_rounds():
        booster = booster[: booster.best_iteration + 1]
    return artifacts.XGBoostModel(columns=columns, booster=booster)


def search(candidate: Candidate, spec: JobSpec, data, columns: list[str], deadline: float) -> SearchResult:
    """Try the candidate's configurations (at least one) until the deadline; keep the best on
    validation by the job's metric."""
    x_train, y_train = data.part("train")
    x_valid, y_valid = data.part("validation")
    signs = spec.monotone_columns()
    monotone = [signs.get(c, 0) for c in columns]
    metric = spec.model.metric
    best: SearchResult | None = None
    tried = []
    for params in configurations(candidate, spec.model.search_iterations, spec.training.seed):
        if best is not None and time.monotonic() > deadline:
            break
        started = time.monotonic()
        model = fit(
            candidate.algorithm,
            params,
            x_train,
            y_train,
            x_valid,
            y_valid,
            columns,
            spec.training.seed,
            monotone,
            deadline,
        )
        validation = probability_metrics(y_valid, model.predict(x_valid))
        tried.append(
            {"params": params, metric: validation[metric], "seconds": round(time.monotonic() - started, 2)}
        )
        if best is None or validation[metric] > best.validation[metric]:
            best = SearchResult(model, params, validation)
    best.tried = tried
    return best


def calibrate(model: artifacts.ScoringModel, data, seed: int) -> tuple[artifacts.ScoringModel, dict]:
    """Fit Platt and isotonic maps on one half of the validation split, judge them on the other, and
    apply the better one (refit on all of validation) only if it lowers the Brier score."""
    x_valid, y_valid = data.part("validation")
    raw = model.predict(x_valid)
    halves = np.random.default_rng(seed).permutation(len(y_valid)) % 2 == 0
    fit_part, judge_part = halves, ~halves
    before = float(brier_score_loss(y_valid[judge_part], raw[judge_part]))
    options = {
        name: maker(raw[fit_part], y_valid[fit_part])
        for name, maker in (("sigmoid", _platt), ("isotonic", _isotonic))
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
    calibration = (_platt if method == "sigmoid" else _isotonic)(raw, y_valid)
    report["chosen"] = method
    return artifacts.CalibratedModel(model, calibration), report


def _platt(scores: np.ndarray, labels: np.ndarray) -> artifacts.Calibration:
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    logit = np.log(clipped / (1 - clipped)).reshape(-1, 1)
    fitted = LogisticRegression(C=1e6, max_iter=1000).fit(logit, labels)
    return artifacts.Calibration(
        "sigmoid", {"a": float(fitted.coef_[0][0]), "b": float(fitted.intercept_[0])}
    )


def _isotonic(scores: np.ndarray, labels: np.ndarray) -> artifacts.Calibration:
    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, labels)
    return artifacts.Calibration(
        "isotonic", {"x": fitted.X_thresholds_.tolist(), "y": fitted.y_thresholds_.tolist()}
    )
