"""The algorithms a job can name, in one table: how each fits, how its artifact is stored and loaded,
and which library versions may load it. Adding an algorithm is one entry in ALGORITHMS.

XGBoost models are stored in XGBoost's own UBJSON format and linear models as plain JSON
(imputation values, scaling, coefficients): neither executes code on load. Scikit-learn's boosted
trees have no such format; they are pickled, and `artifacts.load` unpickles them only after the file
matches its registered sha256 and `check_versions` accepts the scikit-learn that wrote it.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mlpipe.errors import ArtifactError

if TYPE_CHECKING:
    import xgboost as xgb

# scikit-learn and XGBoost take seconds to import: each is imported where a model of its kind is fitted
# or loaded, so that scoring a linear model (or starting a command) does not pay for them.


class ScoringModel(Protocol):
    algorithm: str
    columns: list[str]

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of a float32 matrix."""

    def to_bytes(self) -> bytes:
        """The artifact's content."""


@dataclass(frozen=True)
class FitInput:
    """What every algorithm fits on: the train and validation splits and the job's constraints."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    columns: list[str]
    seed: int
    monotone: list[int]  # per column: +1 increasing, -1 decreasing, 0 free
    categorical: list[bool]  # per column: holds category codes (mlpipe.features.categorical_columns)
    deadline: float  # time.monotonic() after which boosting stops


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: its fit, its artifact suffix and loader, and the versions allowed to load it."""

    name: str
    suffix: str
    fit: Callable[[dict, FitInput], ScoringModel]
    from_bytes: Callable[[bytes, list[str]], ScoringModel]
    check_versions: Callable[[dict[str, str]], None]


# --- logistic regression: numbers only, stored as JSON -------------------------------------------


@dataclass
class LinearModel:
    """Logistic regression after median imputation and standard scaling, as numbers only."""

    columns: list[str]
    impute: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    algorithm: str = "logistic_regression"

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        values = np.where(np.isnan(matrix), self.impute.astype(np.float32), matrix)
        # Row-major whatever the matrix's layout: BLAS sums a row in another order for another layout,
        # and a row must get the same score in evaluation and in any chunk.
        values = values.astype(np.float64, order="C")
        logits = ((values - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def to_bytes(self) -> bytes:
        payload = {
            "format": "mlpipe-linear-v1",
            "columns": self.columns,
            "impute": self.impute.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }
        return json.dumps(payload, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, columns: list[str] | None = None) -> LinearModel:
        payload = json.loads(data)
        if payload.get("format") != "mlpipe-linear-v1":
            raise ArtifactError("not an mlpipe linear model artifact")
        arrays = {k: np.asarray(payload[k], dtype=np.float64) for k in ("impute", "mean", "scale", "coef")}
        # The columns come from the artifact itself: load() compares them with the registry's.
        return cls(columns=payload["columns"], intercept=float(payload["intercept"]), **arrays)


def _fit_logistic(params: dict, data: FitInput) -> LinearModel:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=float(params.get("C", 1.0)), max_iter=2000),
    )
    pipeline.fit(data.x_train, data.y_train)
    imputer, scaler, logistic = (step for _, step in pipeline.steps)
    return LinearModel(
        columns=data.columns,
        impute=imputer.statistics_.astype(np.float64),
        mean=scaler.mean_.astype(np.float64),
        scale=scaler.scale_.astype(np.float64),
        coef=logistic.coef_[0].astype(np.float64),
        intercept=float(logistic.intercept_[0]),
    )


def _any_versions(recorded: dict[str, str]) -> None:
    """Plain numbers in JSON: any library version reads them."""


# --- XGBoost: its own UBJSON format --------------------------------------------------------------


@dataclass
class XGBoostModel:
    """A binary:logistic booster, predicting with inplace_predict (no DMatrix copy)."""

    columns: list[str]
    booster: xgb.Booster
    algorithm: str = "xgboost"

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(matrix, validate_features=False), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return bytes(self.booster.save_raw(raw_format="ubj"))

    @classmethod
    def from_bytes(cls, data: bytes, columns: list[str]) -> XGBoostModel:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return cls(columns=columns, booster=booster)


def _deadline(deadline: float) -> xgb.callback.TrainingCallback:
    """A callback that stops boosting when the candidate's share of the time budget runs out."""
    import xgboost as xgb

    class Deadline(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            return time.monotonic() > deadline

    return Deadline()


def _fit_xgboost(params: dict, data: FitInput) -> XGBoostModel:
    import xgboost as xgb

    params = dict(params)
    rounds = int(params.pop("num_boost_round", 500))
    patience = int(params.pop("early_stopping_rounds", 30))
    # Category codes as native categorical inputs: the booster keeps these types, so inplace_predict
    # on the same float32 codes at scoring splits them the same way.
    types = ["c" if categorical else "q" for categorical in data.categorical]

    def matrix(x: np.ndarray, y: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(x, label=y, feature_types=types, enable_categorical=True)

    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "seed": data.seed,
            "monotone_constraints": "(" + ",".join(str(m) for m in data.monotone) + ")",
            **params,
        },
        matrix(data.x_train, data.y_train),
        num_boost_round=rounds,
        evals=[(matrix(data.x_valid, data.y_valid), "validation")],
        early_stopping_rounds=patience,
        callbacks=[_deadline(data.deadline)],
        verbose_eval=False,
    )
    # Unset when early stopping never recorded a round (no patience, or the deadline stopped boosting
    # first); the best_iteration property then raises in XGBoost 3.
    best = booster.attributes().get("best_iteration")
    if best is not None and int(best) + 1 < booster.num_boosted_rounds():
        booster = booster[: int(best) + 1]
    return XGBoostModel(columns=data.columns, booster=booster)


def _same_xgboost_major(recorded: dict[str, str]) -> None:
    # XGBoost's format is stable within a major version; refuse anything across majors.
    import xgboost as xgb

    made, here = recorded.get("xgboost", "?"), xgb.__version__
    if made.split(".")[0] != here.split(".")[0]:
        raise ArtifactError(f"model trained with xgboost {made} cannot be loaded by xgboost {here}")


# --- scikit-learn HistGradientBoosting: pickled -------------------------------------------------


@dataclass
class SklearnModel:
    """A scikit-learn classifier (HistGradientBoosting), pickled."""

    columns: list[str]
    estimator: object
    algorithm: str = "hist_gradient_boosting"

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(matrix)[:, 1], dtype=np.float64)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self.estimator, protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes, columns: list[str]) -> SklearnModel:
        # Only reached through artifacts.load(), after the sha256 and scikit-learn version checks.
        return cls(columns=columns, estimator=pickle.loads(data))  # noqa: S301


def _fit_hist_gradient_boosting(params: dict, data: FitInput) -> SklearnModel:
    from sklearn.ensemble import HistGradientBoostingClassifier

    estimator = HistGradientBoostingClassifier(
        learning_rate=float(params.get("learning_rate", 0.1)),
        max_iter=int(params.get("max_iter", 300)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 31)),
        min_samples_leaf=int(params.get("min_samples_leaf", 20)),
        l2_regularization=float(params.get("l2_regularization", 0.0)),
        monotonic_cst=data.monotone,
        early_stopping=True,
        n_iter_no_change=int(params.get("n_iter_no_change", 20)),
        random_state=data.seed,
    )
    estimator.fit(data.x_train, data.y_train, X_val=data.x_valid, y_val=data.y_valid)
    return SklearnModel(columns=data.columns, estimator=estimator)


def _same_scikit_learn(recorded: dict[str, str]) -> None:
    # A pickle is only trusted by the exact library version that wrote it.
    import sklearn

    if recorded.get("scikit-learn") != sklearn.__version__:
        raise ArtifactError(
            f"model pickled by scikit-learn {recorded.get('scikit-learn')} is not loaded by scikit-learn "
            f"{sklearn.__version__}; retrain it, or install the recorded version"
        )


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("logistic_regression", "json", _fit_logistic, LinearModel.from_bytes, _any_versions),
        Algorithm("xgboost", "ubj", _fit_xgboost, XGBoostModel.from_bytes, _same_xgboost_major),
        Algorithm(
            "hist_gradient_boosting",
            "pkl",
            _fit_hist_gradient_boosting,
            SklearnModel.from_bytes,
            _same_scikit_learn,
        ),
    )
}


def get(name: str) -> Algorithm:
    """The algorithm of that name; an ArtifactError names the known ones otherwise."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ArtifactError(
            f"unknown model algorithm {name!r}; this mlpipe knows {', '.join(ALGORITHMS)}"
        ) from None
