"""Model artifacts, sha256-verified before use.

XGBoost models are stored in XGBoost's own UBJSON format and linear models as plain JSON
(imputation values, scaling, coefficients): neither executes code on load. Scikit-learn's boosted
trees have no such format; they are pickled, and unpickled only after the file matches its
registered sha256 and the scikit-learn version matches the one that wrote it. Evaluation and daily
scoring predict through the same objects, so a row gets the same score either way.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import sklearn
import xgboost as xgb

from mlpipe.errors import ArtifactError


class ScoringModel(Protocol):
    algorithm: str
    columns: list[str]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each row of a float32 matrix."""

    def to_bytes(self) -> bytes:
        """The artifact's content."""


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

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        values = np.where(np.isnan(matrix), self.impute.astype(np.float32), matrix).astype(np.float64)
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
    def from_bytes(cls, data: bytes) -> LinearModel:
        payload = json.loads(data)
        if payload.get("format") != "mlpipe-linear-v1":
            raise ArtifactError("not an mlpipe linear model artifact")
        arrays = {k: np.asarray(payload[k], dtype=np.float64) for k in ("impute", "mean", "scale", "coef")}
        return cls(columns=payload["columns"], intercept=float(payload["intercept"]), **arrays)


@dataclass
class XGBoostModel:
    """A binary:logistic booster, predicting with inplace_predict (no DMatrix copy)."""

    columns: list[str]
    booster: xgb.Booster
    algorithm: str = "xgboost"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(matrix, validate_features=False), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return bytes(self.booster.save_raw(raw_format="ubj"))

    @classmethod
    def from_bytes(cls, data: bytes, columns: list[str]) -> XGBoostModel:
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return cls(columns=columns, booster=booster)


@dataclass
class SklearnModel:
    """A scikit-learn classifier (HistGradientBoosting), pickled."""

    columns: list[str]
    estimator: object
    algorithm: str = "hist_gradient_boosting"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(matrix)[:, 1], dtype=np.float64)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self.estimator, protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes, columns: list[str]) -> SklearnModel:
        # Only reached after the sha256 and scikit-learn version checks in load().
        return cls(columns=columns, estimator=pickle.loads(data))  # noqa: S301


@dataclass(frozen=True)
class Calibration:
    """A map from raw to calibrated probabilities: Platt scaling or isotonic steps, as numbers."""

    method: str  # "sigmoid" or "isotonic"
    values: dict

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "sigmoid":
            clipped = np.clip(scores, 1e-7, 1 - 1e-7)
            logit = np.log(clipped / (1 - clipped))
            return 1.0 / (1.0 + np.exp(-(self.values["a"] * logit + self.values["b"])))
        return np.interp(scores, self.values["x"], self.values["y"])

    def as_dict(self) -> dict:
        return {"method": self.method, **self.values}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        if not data or data.get("method") in (None, "none"):
            return None
        values = {k: v for k, v in data.items() if k in ("a", "b", "x", "y")}
        return cls(method=data["method"], values=values)


@dataclass
class CalibratedModel:
    """A model whose probabilities pass through a calibration map."""

    base: ScoringModel
    calibration: Calibration

    @property
    def algorithm(self) -> str:
        return self.base.algorithm

    @property
    def columns(self) -> list[str]:
        return self.base.columns

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.base.predict(matrix))

    def to_bytes(self) -> bytes:
        return self.base.to_bytes()


def library_versions() -> dict[str, str]:
    """Versions recorded with every artifact and checked before it is loaded."""
    return {"xgboost": xgb.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def save(model: ScoringModel, folder: Path, name: str) -> tuple[str, str]:
    """Write the artifact to folder/name; returns (path, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = model.to_bytes()
    path = folder / name
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # never a half-written artifact under the final name
    return str(path), hashlib.sha256(data).hexdigest()


_cache: dict[tuple[str, str, str], ScoringModel] = {}
_cache_lock = threading.Lock()


def load(
    path: str,
    sha256: str,
    algorithm: str,
    columns: list[str],
    versions: dict[str, str],
    calibration: dict | None = None,
) -> ScoringModel:
    """Load an artifact only if its bytes match the registered sha256 and its library is compatible.

    Loaded models are cached per process by (path, sha256, calibration): chunk tasks share one copy."""
    key = (path, sha256, json.dumps(calibration, sort_keys=True))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ArtifactError(f"model artifact {path} cannot be read: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactError(
                f"model artifact {path} does not match its registered sha256 "
                f"(expected {sha256[:12]}…, found {actual[:12]}…); it was changed after training. "
                "Restore the file or retrain."
            )
        _check_versions(algorithm, versions)
        if algorithm == "xgboost":
            model: ScoringModel = XGBoostModel.from_bytes(data, columns)
        elif algorithm == "logistic_regression":
            model = LinearModel.from_bytes(data)
        elif algorithm == "hist_gradient_boosting":
            model = SklearnModel.from_bytes(data, columns)
        else:
            raise ArtifactError(f"unknown model algorithm {algorithm!r} for artifact {path}")
        if model.columns != columns:
            raise ArtifactError(f"model artifact {path} was made for other feature columns")
        calibrated = Calibration.from_dict(calibration)
        if calibrated is not None:
            model = CalibratedModel(model, calibrated)
        _cache[key] = model
        return model


def _check_versions(algorithm: str, recorded: dict[str, str]) -> None:
    # XGBoost's format is stable within a major version; refuse anything across majors.
    if algorithm == "xgboost":
        made, here = recorded.get("xgboost", "?"), xgb.__version__
        if made.split(".")[0] != here.split(".")[0]:
            raise ArtifactError(f"model trained with xgboost {made} cannot be loaded by xgboost {here}")
    # A pickle is only trusted by the exact library version that wrote it.
    if algorithm == "hist_gradient_boosting" and recorded.get("scikit-learn") != sklearn.__version__:
        raise ArtifactError(
            f"model pickled by scikit-learn {recorded.get('scikit-learn')} is not loaded by scikit-learn "
            f"{sklearn.__version__}; retrain it, or install the recorded version"
        )
