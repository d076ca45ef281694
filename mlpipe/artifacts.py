"""Model artifacts: formats that execute no code on load, sha256-verified before use.

XGBoost models are stored in XGBoost's own UBJSON format; linear models as plain JSON
(imputation values, scaling, coefficients). Both predict with the same code in evaluation and
in daily scoring, so a row gets the same score either way.
"""

from __future__ import annotations

import hashlib
import json
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


_cache: dict[tuple[str, str], ScoringModel] = {}
_cache_lock = threading.Lock()


def load(
    path: str, sha256: str, algorithm: str, columns: list[str], versions: dict[str, str]
) -> ScoringModel:
    """Load an artifact only if its bytes match the registered sha256 and its library is compatible.

    Loaded models are cached per process by (path, sha256): chunk tasks share one copy."""
    key = (path, sha256)
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
        else:
            raise ArtifactError(f"unknown model algorithm {algorithm!r} for artifact {path}")
        if model.columns != columns:
            raise ArtifactError(f"model artifact {path} was made for other feature columns")
        _cache[key] = model
        return model


def _check_versions(algorithm: str, recorded: dict[str, str]) -> None:
    # XGBoost's format is stable within a major version; refuse anything across majors.
    if algorithm == "xgboost":
        made, here = recorded.get("xgboost", "?"), xgb.__version__
        if made.split(".")[0] != here.split(".")[0]:
            raise ArtifactError(f"model trained with xgboost {made} cannot be loaded by xgboost {here}")
