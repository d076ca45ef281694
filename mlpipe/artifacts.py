"""Model artifacts: content-addressed files, sha256-verified before use.

Each file is named by its own sha256 (`<store>/<job>/<sha256>.<suffix>`), so two databases or
projects sharing a store can never overwrite each other's models, and a file is only loaded when its
bytes match the sha256 the registry recorded. How each algorithm reads and writes its bytes, and
which library versions may load them, is in `mlpipe.algorithms`. Evaluation and daily scoring predict
through the same objects, so a row gets the same score either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlpipe import algorithms
from mlpipe.algorithms import ScoringModel
from mlpipe.calibration import EPSILON, Calibration, logit  # noqa: F401 (re-exported)
from mlpipe.errors import ArtifactError


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

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.base.predict_proba(matrix))

    def to_bytes(self) -> bytes:
        return self.base.to_bytes()


def library_versions() -> dict[str, str]:
    """Versions recorded with every artifact and checked before it is loaded."""
    import sklearn  # imported only where a model is registered: seconds that scoring does not need
    import xgboost as xgb

    return {"xgboost": xgb.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__}


def save(model: ScoringModel, folder: Path) -> tuple[str, str]:
    """Write the artifact as folder/<sha256>.<suffix>; returns (path, sha256).

    The name is the content's own hash, so it cannot collide with another model's; writing the same
    model twice finds the file already there and leaves it alone."""
    data = model.to_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    path = folder / f"{sha256}.{algorithms.get(model.algorithm).suffix}"
    if path.exists():
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != sha256:
            raise ArtifactError(
                f"model artifact {path} exists but its content hashes to {found[:12]}…, not its name; "
                "it was changed after it was written. Move it aside and train again."
            )
        return str(path), sha256
    folder.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same folder, then a rename: never a half-written artifact under the
    # final name, and concurrent writers of the same model each rename identical bytes.
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{sha256[:12]}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path), sha256


def verified_bytes(path: str, sha256: str) -> bytes:
    """The artifact's bytes, only if they match the registered sha256 (milliseconds: no library needed)."""
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
    return data


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
        data = verified_bytes(path, sha256)
        kind = algorithms.get(algorithm)
        kind.check_versions(versions)
        model = kind.from_bytes(data, columns)
        if model.columns != columns:
            raise ArtifactError(f"model artifact {path} was made for other feature columns")
        calibrated = Calibration.from_dict(calibration)
        if calibrated is not None:
            model = CalibratedModel(model, calibrated)
        _cache[key] = model
        return model
