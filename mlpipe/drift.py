"""Drift as statistics on histograms: reference bins fixed at training, counted while scoring.

Each model input gets reference bins when the model is trained: numeric inputs 10 quantile bins of
the train split plus missing, below-range and above-range bins; categorical inputs one bin per
category plus missing and unknown. A scoring chunk counts its rows into those bins (vectorized, in
the same pass), the run keeps the sums, and drift is PSI and Jensen-Shannon distance between two
such count vectors, so no day is ever read back to measure it.

Bin layout of a count vector: numeric [missing, below, inner..., above]; categorical
[missing, unknown, category...].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlpipe.spec import JobSpec

QUANTILE_BINS = 10
MISSING, BELOW, UNKNOWN = 0, 1, 1
SCORE = "score"
SCORE_EDGES = np.linspace(0.0, 1.0, 21).tolist()


def numeric_reference(values: np.ndarray) -> dict:
    """Quantile edges of the non-missing training values, and the training counts in them."""
    present = values[~np.isnan(values)]
    if len(present) == 0:
        edges = [0.0, 0.0]
    else:
        edges = np.unique(np.quantile(present, np.linspace(0, 1, QUANTILE_BINS + 1))).tolist()
        edges = edges if len(edges) > 1 else edges * 2  # one value: one inner bin [v, v]
    reference = {"kind": "numeric", "edges": edges}
    return {**reference, "counts": count(reference, values).tolist()}


def categorical_reference(values: np.ndarray, categories: list[str]) -> dict:
    reference = {"kind": "categorical", "categories": list(categories)}
    return {**reference, "counts": count(reference, values).tolist()}


def score_reference(scores: np.ndarray) -> dict:
    """The score's reference: 20 equal bins of [0, 1] over the out-of-time test scores."""
    reference = {"kind": "numeric", "edges": SCORE_EDGES}
    return {**reference, "counts": count(reference, scores).tolist()}


def count(reference: dict, values) -> np.ndarray:
    """Count values into a reference's bins (see the module docstring for the layout)."""
    if reference["kind"] == "categorical":
        return _count_categories(reference["categories"], values)
    edges = np.asarray(reference["edges"], dtype=np.float64)
    values = np.asarray(values)
    # The inner bins are [edge, next edge), the last one closed; "above" is > the top edge. A count of
    # values below each bound per bound (a dozen vectorized compares, no sort) is ~2x faster than
    # np.histogram, which sorts every chunk's column for uneven bins. NaN is below no bound.
    bounds = np.append(edges[:-1], np.nextafter(edges[-1], np.inf))
    below = np.array([np.count_nonzero(values < bound) for bound in bounds], dtype=np.int64)
    counts = np.empty(len(edges) + 2, dtype=np.int64)
    counts[MISSING] = np.count_nonzero(np.isnan(values))
    counts[MISSING + 1] = below[0]
    counts[MISSING + 2 : -1] = np.diff(below)
    counts[-1] = len(values) - counts[MISSING] - below[-1]
    return counts


def _count_categories(categories: list[str], values) -> np.ndarray:
    """[missing, unknown, category...] counts, in Arrow: a chunk's strings are Arrow's already, so no
    Python string per row (measured 100 ms -> 22 ms for a mixed chunk's four categorical inputs)."""
    values = pa.array(values, from_pandas=True)  # NaN in an object array is missing, as pandas says
    if pa.types.is_null(values.type):  # nothing but missing values: no type to look categories up in
        values = values.cast(pa.string())
    codes = pc.index_in(values, value_set=pa.array(categories, type=pa.string()))
    # A known category's bin is its code + 2; a value not in the set has no code: unknown, or missing.
    bins = pc.if_else(pc.is_null(values), MISSING, pc.fill_null(pc.add(codes, 2), UNKNOWN))
    return np.bincount(np.asarray(bins), minlength=len(categories) + 2)


def size(reference: dict) -> int:
    """How many bins a reference's count vector has."""
    if reference["kind"] == "categorical":
        return len(reference["categories"]) + 2
    return len(reference["edges"]) + 2


def _shares(counts) -> np.ndarray:
    # Half a count in every bin: an empty bin on one side must not make the statistic infinite.
    counts = np.asarray(counts, dtype=np.float64) + 0.5
    return counts / counts.sum()


def psi(current, reference) -> float:
    """Population stability index of two count vectors over the same bins (0: same; > 0.25: large)."""
    p, q = _shares(current), _shares(reference)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(current, reference) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) of two count vectors."""
    from scipy.spatial.distance import jensenshannon  # scipy.stats alone takes ~0.5 s: only when used

    return float(jensenshannon(_shares(current), _shares(reference), base=2))


def missing_share(counts) -> float:
    counts = np.asarray(counts)
    return float(counts[MISSING] / counts.sum()) if counts.sum() else 0.0


def unknown_share(reference: dict, counts) -> float | None:
    """Share of unknown categories (None for numeric inputs)."""
    if reference["kind"] != "categorical":
        return None
    counts = np.asarray(counts)
    return float(counts[UNKNOWN] / counts.sum()) if counts.sum() else 0.0


def level(value: float | None, warn: float, fail: float) -> str:
    """ok, warn or fail for a statistic against the job's thresholds."""
    if value is None or value < warn:
        return "ok"
    return "fail" if value >= fail else "warn"


def _inputs(spec: JobSpec, frame: pd.DataFrame, matrix: np.ndarray, columns: list[str]):
    """(input name, its values) for every model input: categories raw from the frame (so missing and
    unknown stay apart), everything else as the model receives it."""
    index = {column: i for i, column in enumerate(columns)}
    for name, feature in spec.features.items():
        if feature.kind == "categorical":
            yield name, frame[name]  # as read (Arrow strings): counted without a Python object per row
        else:
            yield name, matrix[:, index[name]]
    for name in spec.derived:
        yield name, matrix[:, index[name]]


def references(
    spec: JobSpec, frame: pd.DataFrame, matrix: np.ndarray, columns: list[str], scores: np.ndarray
) -> dict:
    """Training reference bins of every input (from the train split's rows) and of the score."""
    found = {}
    for name, values in _inputs(spec, frame, matrix, columns):
        feature = spec.features.get(name)
        if feature is not None and feature.kind == "categorical":
            found[name] = categorical_reference(values, feature.categories)
        else:
            found[name] = numeric_reference(np.asarray(values, dtype=np.float64))
    found[SCORE] = score_reference(scores)
    return found


def count_inputs(
    reference: dict, spec: JobSpec, frame: pd.DataFrame, matrix: np.ndarray, columns: list[str]
) -> dict[str, list[int]]:
    """One chunk's counts of every input in the model's reference bins (the score: `count`)."""
    return {
        name: count(reference[name], values).tolist()
        for name, values in _inputs(spec, frame, matrix, columns)
        if name in reference
    }


def add(total: dict[str, list[int]] | None, counts: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Sum two sets of counts over the same bins (a run's chunks)."""
    if not total:
        return dict(counts or {})
    return {name: (np.asarray(total[name]) + np.asarray(c)).tolist() for name, c in (counts or {}).items()}
