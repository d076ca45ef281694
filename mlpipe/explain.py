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

import json
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from psycopg import sql

from mlpipe.artifacts import logit
from mlpipe.errors import ArtifactError
from mlpipe.features import matrix_columns
from mlpipe.spec import JobSpec

BINS = 16
SWEEPS = 12
FIT_ROWS = 200_000
CLIP = 9.999  # contributions are published to 3 decimals with one integer digit; beyond +-10 says it all


def feature_groups(columns: list[str]) -> list[str]:
    """The feature each model input belongs to: one-hot columns `name=category` belong to `name`."""
    return [column.split("=", 1)[0] for column in columns]


def reason_names(columns: list[str]) -> list[str]:
    """The features reasons name, in order, for these model inputs (what a surrogate explains)."""
    return list(dict.fromkeys(feature_groups(columns)))


def job_reason_names(spec: JobSpec) -> list[str]:
    """What reason codes count in for a job: every model of it, champion or challenger, top-up or
    daily run, names its features from this one list, so the view needs no lookup per row."""
    return reason_names(matrix_columns(spec))


def reasons_sql(names: list[str], k: int) -> sql.Composed:
    """The published `reasons` as plain SQL: the documented jsonb, e.g.
    [{"feature": "tenure_days", "contribution": -0.130}], from a row's reason_codes; days published
    before reason codes show their stored jsonb. The JSON text is put together from a constant array
    of each feature's opening (name already quoted) and the contributions, then read as jsonb: fewer
    and cheaper steps than jsonb_build_object, and one expression to plan, so a lookup by key costs
    about what stored jsonb did. A row with fewer codes than k (a day scored before k grew) shows
    what it has (a missing code makes its item NULL, coalesced away); with more, its k largest."""
    if k == 0:
        return sql.SQL("reasons")
    openings = sql.Literal([f'{{"feature": {json.dumps(name)}, "contribution": ' for name in names])
    items = [
        sql.SQL(
            "({openings}::text[])[reason_codes[{i}][1]] || (reason_codes[{i}][2] * 0.001)::text || '}}'"
        ).format(openings=openings, i=sql.Literal(i))  # thousandths: three decimals, as written
        for i in range(1, k + 1)
    ]
    rest = [sql.SQL("coalesce(', ' || {}, '')").format(item) for item in items[1:]]
    return sql.SQL("case when reason_codes is null then reasons else ('[' || {} || ']')::jsonb end").format(
        sql.SQL(" || ").join([items[0], *rest])
    )


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
        names, features = feature_groups(columns), reason_names(columns)
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
        # Column by column on a contiguous copy: strided columns make every pass several times slower.
        by_input = np.ascontiguousarray(matrix.T, dtype=np.float32)
        out = np.zeros((len(self.features), len(matrix)), dtype=np.float32)
        one_each = np.array_equal(self.groups, np.arange(len(self.groups)))
        for j, (edges, values) in enumerate(zip(self._search_edges, self._values32, strict=True)):
            column = by_input[j]
            # The bin is the count of edges at or below the value (searchsorted's "right" side): a
            # compare-and-add per edge is several times faster than a binary search for 16 edges.
            bin_of = np.zeros(len(column), dtype=np.min_scalar_type(len(edges)))
            for edge in edges:
                bin_of += column >= edge
            np.copyto(bin_of, len(edges), where=np.isnan(column))  # missing: the last bin, after +inf
            found = values.take(bin_of)
            if one_each:
                out[j] = found
            else:
                out[self.groups[j]] += found
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
    """Top-k reasons per row as compact codes, built with numpy (no Python per row): for each row a
    (k, 2) smallint array of [position of the feature in `names` (1-based, as SQL arrays count),
    contribution in thousandths of log-odds], the k features with the largest contributions by size,
    largest first (ties: the earlier feature). The published view turns them into the documented JSON
    with plain SQL (reasons_sql); storing them compactly instead of as jsonb spares the server
    parsing JSON on COPY and keeps the rows small."""

    def __init__(self, features: list[str], k: int, names: list[str] | None = None) -> None:
        names = features if names is None else names
        missing = [f for f in features if f not in names]
        if missing:
            raise ArtifactError(
                f"the model's reasons name features the job no longer has ({', '.join(missing)}; the job "
                f"has {', '.join(names)}): retrain the model, or set outputs.reasons: 0"
            )
        self.k = min(k, len(features))
        self.positions = np.array([names.index(f) + 1 for f in features], dtype=np.int16)

    def encode(self, contributions: np.ndarray) -> np.ndarray:
        """(rows, k, 2) int16 codes for (rows, features) contributions."""
        by_feature = np.ascontiguousarray(contributions.T)  # contiguous rows per feature for each pass
        rows = by_feature.shape[1]
        # Insert each feature into a running top k: k small and few features, so a handful of
        # vectorized passes per feature beat sorting or k argmax passes over every row.
        top_size = np.full((self.k, rows), -1.0, dtype=np.float32)
        top_feature = np.zeros((self.k, rows), dtype=np.intp)
        for j, size in enumerate(np.abs(by_feature)):
            for slot in reversed(range(self.k)):  # bottom up: each slot reads its upper slot's old value
                here = size > top_size[slot]
                np.copyto(top_size[slot], size, where=here)
                np.copyto(top_feature[slot], j, where=here)
                if slot:  # beaten the slot above too: that one moves down here
                    above = size > top_size[slot - 1]
                    np.copyto(top_size[slot], top_size[slot - 1], where=above)
                    np.copyto(top_feature[slot], top_feature[slot - 1], where=above)
        chosen = np.take_along_axis(by_feature, top_feature, axis=0)
        codes = np.empty((rows, self.k, 2), dtype=np.int16)
        codes[:, :, 0] = self.positions[top_feature].T
        codes[:, :, 1] = np.rint(np.clip(chosen, -CLIP, CLIP) * 1000).T
        return codes


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
