"""Calibration maps and log-odds, as plain numbers (no ML library): shared by the models that apply
them while scoring and by the monitor, which reads every day's scores through one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Probabilities are kept this far from 0 and 1 before taking log-odds, so the logit stays finite.
EPSILON = 1e-7


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Log-odds of probabilities, clipped to [EPSILON, 1 - EPSILON] first."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


@dataclass(frozen=True)
class Calibration:
    """A map from raw to calibrated probabilities: Platt scaling or isotonic steps, as numbers."""

    method: str  # "sigmoid" or "isotonic"
    values: dict

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(self.values["a"] * logit(scores) + self.values["b"])))
        return np.interp(scores, self.values["x"], self.values["y"])

    def as_dict(self) -> dict:
        return {"method": self.method, **self.values}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        if not data or data.get("method") in (None, "none"):
            return None
        values = {k: v for k, v in data.items() if k in ("a", "b", "x", "y")}
        return cls(method=data["method"], values=values)
