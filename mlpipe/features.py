"""From raw feature rows to the model's matrix: row checks, derived features, encoding.

Training and scoring both call these functions, so a row gets the same features either way. Pure:
no database here (what the SQL source must return is checked in mlpipe.extract).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlpipe.errors import SourceError
from mlpipe.spec import Feature, JobSpec

# The reason a row without a key is quarantined with: mlpipe.quarantine.entity_id stays NULL for it.
MISSING_KEY = "missing key: the features SQL returned a null {key} (entity_id is left null here)"

# A row rule's reason: one text, or a function naming each flagged row (given the rule's mask).
Reason = str | Callable[[np.ndarray], np.ndarray]


def row_rules(frame: pd.DataFrame, spec: JobSpec) -> Iterator[tuple[np.ndarray, Reason]]:
    """Every check a row must pass, in order of precedence, as (mask of the rows it flags, reason).

    Each mask is a few vectorized comparisons over the whole frame (no strings); a reason that names
    a value is built only for the rows its rule flags."""
    key = frame[spec.entity.key]
    no_key = key.isna().to_numpy()
    yield no_key, MISSING_KEY.format(key=spec.entity.key)
    yield key.duplicated(keep=False).to_numpy() & ~no_key, "duplicate key"
    for name, feature in spec.features.items():
        yield from _feature_rules(frame[name], name, feature)


def _feature_rules(column: pd.Series, name: str, feature: Feature) -> Iterator[tuple[np.ndarray, Reason]]:
    if feature.missing == "reject":
        yield column.isna().to_numpy(), f"{name}: missing"
    if feature.kind == "numeric":
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)  # a view for float64 columns
        not_finite = np.isinf(values)
        if column.dtype.kind != "f":  # a NaN that pandas does not call missing (in a float column it is)
            not_finite |= np.isnan(values) & column.notna().to_numpy()
        yield not_finite, f"{name}: not a finite number"
        with np.errstate(invalid="ignore"):
            if feature.min is not None:
                yield values < feature.min, f"{name}: below the minimum {feature.min:g}"
            if feature.max is not None:
                yield values > feature.max, f"{name}: above the maximum {feature.max:g}"
    elif feature.kind == "categorical" and feature.unknown == "reject":
        unknown = (column.notna() & ~column.isin(feature.categories)).to_numpy()
        yield unknown, lambda mask: (f"{name}: unknown category " + column[mask].astype(str)).to_numpy()


def find_bad_rows(frame: pd.DataFrame, spec: JobSpec) -> pd.Series:
    """The reason each row cannot be scored, or None; the first rule of `row_rules` that flags it wins."""
    reasons = np.full(len(frame), None, dtype=object)
    flagged = None  # allocated at the first flagged row: usually never
    for mask, reason in row_rules(frame, spec):
        if not mask.any():
            continue
        flagged = np.zeros(len(frame), dtype=bool) if flagged is None else flagged
        mask = mask & ~flagged
        reasons[mask] = reason if isinstance(reason, str) else reason(mask)
        flagged |= mask
    return pd.Series(reasons, index=frame.index, dtype=object)


def entity_keys(frame: pd.DataFrame, spec: JobSpec) -> np.ndarray:
    """The keys of checked rows (no nulls left) as numpy: int64 for bigint keys, whatever dtype the
    reader gave them (a column with a null in it comes back nullable), else objects."""
    key = frame[spec.entity.key]
    return key.to_numpy(dtype=np.int64) if spec.entity.type == "bigint" else key.to_numpy(dtype=object)


def native_categoricals(spec: JobSpec) -> bool:
    """Whether the job's categories reach the model as one column of codes each (XGBoost's native
    categorical inputs) rather than one-hot: when every candidate is XGBoost. Scikit-learn's models
    read every input as a number, so a job with one of them keeps one-hot for all (one matrix per job)."""
    return all(candidate.algorithm == "xgboost" for candidate in spec.model.candidates)


def matrix_columns(spec: JobSpec) -> list[str]:
    """Names of the model's input columns, in order: a native categorical is its feature's name."""
    columns: list[str] = []
    native = native_categoricals(spec)
    for name, feature in spec.features.items():
        if feature.kind == "categorical" and not native:
            columns += [f"{name}={category}" for category in feature.categories]
        else:
            columns.append(name)
    return columns + list(spec.derived)


def categorical_columns(spec: JobSpec) -> list[bool]:
    """For each model input: whether it holds category codes (XGBoost's feature type 'c')."""
    native = {n for n, f in spec.features.items() if f.kind == "categorical" and native_categoricals(spec)}
    return [column in native for column in matrix_columns(spec)]


def to_matrix(
    frame: pd.DataFrame, spec: JobSpec, categories: dict[str, list[str]] | None = None
) -> np.ndarray:
    """Encode checked rows as float32: numbers as they are (NaN when missing and imputed later by the
    model), booleans as 0/1, categories as codes or one-hot (see `native_categoricals`), then derived.

    A category's code is its position in `categories` (the ones the model was trained with, stored in
    its feature schema; the spec's by default); a missing or unknown one is NaN as a code (XGBoost's
    missing) and all zeros one-hot."""
    zero_filled = {n: frame[n].fillna(0) for n, f in spec.features.items() if f.missing == "zero"}
    if zero_filled:  # derived functions see the same cleaned values as the model
        frame = frame.assign(**zero_filled)
    native = native_categoricals(spec)
    # One array filled block by block: no intermediate copy of the frame or of the matrix. Column-major,
    # so each column is written (and read by the checks) contiguously: 5x faster to fill than row-major,
    # and XGBoost predicts from it as it is, with the same scores.
    out = np.empty((len(frame), len(matrix_columns(spec))), dtype=np.float32, order="F")
    at = 0
    for name, feature in spec.features.items():
        column = frame[name]
        if feature.kind == "categorical":
            codes = category_codes(column, (categories or {}).get(name, feature.categories))
            if native:
                out[:, at] = codes
                out[codes < 0, at] = np.nan
                at += 1
            else:
                one_hot(codes, out[:, at : at + len(feature.categories)])
                at += len(feature.categories)
        else:
            out[:, at] = column.to_numpy(dtype=np.float32, na_value=np.nan)
            at += 1
    for name, function in spec.derived_functions.items():
        values = np.asarray(function(frame), dtype=np.float32)
        if values.shape != (len(frame),):
            raise SourceError(f"job {spec.name}: derived feature {name} returned shape {values.shape}")
        out[:, at] = values
        at += 1
    return out


def category_codes(column: pd.Series, categories: list[str]) -> np.ndarray:
    """Each value's position in `categories`, -1 when missing or unknown: one hash lookup per row, in
    Arrow (the chunk's strings are Arrow's already: no Python string per row)."""
    codes = pc.index_in(pa.array(column), value_set=pa.array(categories, type=pa.string()))
    return codes.fill_null(-1).to_numpy()


def one_hot(codes: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` (rows, categories) with the indicators of `codes`, all zeros for a code of -1."""
    out[:] = 0.0
    known = codes >= 0
    out[np.flatnonzero(known), codes[known]] = 1.0


def baseline_values(matrix: np.ndarray, spec: JobSpec) -> np.ndarray:
    """The baseline rule's score: one input column, signed so that higher means more likely positive,
    missing values at the column's median."""
    rule = spec.model.baseline
    values = matrix[:, matrix_columns(spec).index(rule.feature)].astype(np.float64)
    fill = np.nanmedian(values) if np.isfinite(values).any() else 0.0
    values = np.where(np.isnan(values), fill, values)
    return values if rule.direction == "higher_is_positive" else -values
