"""Reasons per row: which features pushed each score up or down, cheap enough for a whole population.

Exact SHAP for a 300-tree model runs at hundreds of rows per second and XGBoost's approximate
contributions at tens of thousands; scoring runs at hundreds of thousands. So training fits an
additive surrogate of the final model: for every feature a step function over its quantile bins (and
one value for missing), fitted by backfitting to the model's log-odds on training rows. A row's
contribution from a feature is its step value minus that step function's average, in log-odds; the
sum over features approximates the score's log-odds minus the average. Scoring it is one binary
search and one lookup per feature. How well the surrogate follows the model (R^2 on the validation
split) is stored with it, so a poor fit is visible rather than silent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from mlpipe.artifacts import logit

BINS = 16
SWEEPS = 12
FIT_ROWS = 200_000
CLIP = 9.999  # contributions are written with one integer digit; beyond +-10 log-odds says it all


def feature_groups(columns: list[str]) -> list[str]:
    """The feature each model input belongs to: one-hot columns `name=category` belong to `name`."""
    return [column.split("=", 1)[0] for column in columns]


@dataclass(frozen=True)
class Surrogate:
    features: list[str]  # one per reason; model inputs are grouped into them
    groups: np.ndarray  # for each model input, the index of its feature
    edges: list[np.ndarray]  # per input: inner bin edges
    values: list[np.ndarray]  # per input: step value per bin, then the value for missing
    r2: float | None  # None when the validation rows cannot tell (too few, or a constant model)

    @classmethod
    def fit(cls, matrix: np.ndarray, logit: np.ndarray, columns: list[str], validation: tuple) -> Surrogate:
        """Backfit one step function per input to `logit` (the model's log-odds on these rows)."""
        edges = [_edges(matrix[:, j]) for j in range(matrix.shape[1])]
        bins = np.column_stack([_bin(matrix[:, j], edges[j]) for j in range(matrix.shape[1])])
        sizes = [len(e) + 2 for e in edges]  # bins between edges, plus one for missing
        values = [np.zeros(size) for size in sizes]
        residual = logit - logit.mean()
        for _ in range(SWEEPS):
            for j, size in enumerate(sizes):
                residual += values[j][bins[:, j]]
                counts = np.bincount(bins[:, j], minlength=size)
                sums = np.bincount(bins[:, j], weights=residual, minlength=size)
                step = np.divide(sums, counts, out=np.zeros(size), where=counts > 0)
                step -= np.average(step, weights=counts)  # centred: zero on average over the rows
                values[j] = step
                residual -= step[bins[:, j]]
        names = feature_groups(columns)
        features = list(dict.fromkeys(names))
        groups = np.array([features.index(n) for n in names])
        fitted = cls(features, groups, edges, values, r2=None)
        return replace(fitted, r2=fitted.r2_on(*validation))

    def r2_on(self, matrix: np.ndarray, logit: np.ndarray) -> float | None:
        if len(matrix) < 2:
            return None
        predicted = self.contributions(matrix).sum(axis=1)
        centred = logit - logit.mean()
        total = float(np.sum(centred**2))
        return 1.0 - float(np.sum((centred - predicted) ** 2)) / total if total > 0 else None

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """(rows, features) contributions in log-odds, float32."""
        out = np.zeros((len(self.features), len(matrix)), dtype=np.float32)
        for j, (edges, values) in enumerate(zip(self._search_edges, self._values32, strict=True)):
            # NaN sorts after +inf: missing values land in the last bin without a separate pass.
            out[self.groups[j]] += values[np.searchsorted(edges, matrix[:, j], side="right")]
        return out.T

    @cached_property
    def _search_edges(self) -> list[np.ndarray]:
        return [np.append(e, np.inf).astype(np.float32) for e in self.edges]

    @cached_property
    def _values32(self) -> list[np.ndarray]:
        return [v.astype(np.float32) for v in self.values]

    def as_dict(self) -> dict:
        return {
            "method": "additive surrogate (quantile step functions, backfitted to the model's log-odds)",
            "features": self.features,
            "groups": self.groups.tolist(),
            "edges": [e.tolist() for e in self.edges],
            "values": [v.tolist() for v in self.values],
            "r2": self.r2,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Surrogate:
        return cls(
            data["features"],
            np.asarray(data["groups"], dtype=np.int64),
            [np.asarray(e, dtype=np.float64) for e in data["edges"]],
            [np.asarray(v, dtype=np.float64) for v in data["values"]],
            data["r2"],
        )


def _edges(column: np.ndarray) -> np.ndarray:
    present = column[~np.isnan(column)]
    if len(present) == 0:
        return np.empty(0)
    # Observed values (method "lower"), so float32 inputs compare with them exactly at scoring time.
    return np.unique(np.quantile(present, np.linspace(0, 1, BINS + 1)[1:-1], method="lower"))


def _bin(column: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value: 0..len(edges) by the edges, len(edges)+1 for missing."""
    index = np.searchsorted(edges, column, side="right")
    index[np.isnan(column)] = len(edges) + 1
    return index


class ReasonWriter:
    """Top-k reasons per row as fixed-width jsonb text, built with numpy (no Python per row):

        [{"feature":"payments_failed","contribution": 0.412},{"feature":"tenure_days","contribution":-0.130}]

    the k features with the largest contributions by size, largest first. Every row has the same
    byte length (names padded with spaces after their closing quote, which JSON allows), so the
    rows go into the binary COPY record like any fixed-width column."""

    def __init__(self, features: list[str], k: int) -> None:
        self.k = min(k, len(features))
        width = max(len(f.encode()) for f in features) + 1
        # Each name with its closing quote, padded: a (features, width) byte table to index into.
        self.names = np.full((len(features), width), ord(" "), dtype=np.uint8)
        for i, name in enumerate(features):
            encoded = name.encode() + b'"'
            self.names[i, : len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        head, middle = b'{"feature":"', b',"contribution":'
        item = head + b" " * width + middle + b" 0.000}"
        self.template = np.frombuffer(
            b"[" + b",".join([item] * self.k) + b"]" if self.k else b"[]", dtype=np.uint8
        ).copy()
        self.width = len(self.template)
        starts = 1 + np.arange(self.k) * (len(item) + 1)
        self.name_at = starts + len(head)
        self.number_at = self.name_at + width + len(middle)

    def encode(self, contributions: np.ndarray) -> np.ndarray:
        """(rows, width) bytes of JSON for (rows, features) contributions."""
        rows = len(contributions)
        out = np.tile(self.template, (rows, 1))
        if self.k == 0 or rows == 0:
            return out
        size = np.abs(contributions)
        order = np.empty((rows, self.k), dtype=np.intp)
        everyone = np.arange(rows)
        for slot in range(self.k):  # k small: k passes of argmax beat sorting every row
            order[:, slot] = np.argmax(size, axis=1)
            size[everyone, order[:, slot]] = -1.0
        chosen = np.take_along_axis(contributions, order, axis=1)
        thousandths = np.rint(np.clip(chosen, -CLIP, CLIP) * 1000).astype(np.int64)
        sign = np.where(thousandths < 0, ord("-"), ord(" ")).astype(np.uint8)
        magnitude = np.abs(thousandths)
        width = self.names.shape[1]
        for slot in range(self.k):
            at = self.name_at[slot]
            out[:, at : at + width] = self.names[order[:, slot]]
            at = self.number_at[slot]
            digits = magnitude[:, slot]
            out[:, at] = sign[:, slot]
            out[:, at + 1] = ord("0") + digits // 1000
            out[:, at + 3] = ord("0") + digits // 100 % 10
            out[:, at + 4] = ord("0") + digits // 10 % 10
            out[:, at + 5] = ord("0") + digits % 10
        return out


def fit_for(
    predict_proba, x_train: np.ndarray, x_validation: np.ndarray, columns: list[str], seed: int
) -> dict:
    """Fit the surrogate of a trained model (`predict_proba` gives probabilities) on up to FIT_ROWS training
    rows; R^2 measured on the validation split. Returns what the registry stores."""
    rng = np.random.default_rng(seed)
    if len(x_train) > FIT_ROWS:
        x_train = x_train[np.sort(rng.choice(len(x_train), FIT_ROWS, replace=False))]
    surrogate = Surrogate.fit(
        x_train, logit(predict_proba(x_train)), columns, (x_validation, logit(predict_proba(x_validation)))
    )
    return surrogate.as_dict()
