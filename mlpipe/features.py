"""From raw source columns to the model's matrix: types, row checks, derived features, encoding.

Training and scoring both call these functions, so a row gets the same features either way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from mlpipe.errors import SourceError
from mlpipe.spec import JobSpec

_ARROW_TYPES = {"numeric": pa.float64(), "categorical": pa.string(), "boolean": pa.bool_()}
# PostgreSQL type OIDs each feature kind accepts (int2/4/8, float4/8, numeric; text, varchar, bpchar; bool).
_PG_TYPES = {
    "numeric": {21, 23, 20, 700, 701, 1700},
    "categorical": {25, 1043, 1042},
    "boolean": {16},
}
_KEY_TYPES = {"bigint": ({20, 21, 23}, pa.int64()), "text": ({25, 1043, 1042}, pa.string())}


def source_types(spec: JobSpec) -> dict[str, pa.DataType]:
    """Arrow type of each column the features SQL returns: the key, then every raw feature."""
    types = {spec.entity.key: _KEY_TYPES[spec.entity.type][1]}
    types.update({name: _ARROW_TYPES[f.kind] for name, f in spec.features.items()})
    return types


def check_source_columns(
    conn: psycopg.Connection, spec: JobSpec, query: sql.Composable, params: dict
) -> dict:
    """Compare the columns a query returns (without running it) with the spec; say what differs.
    Returns each column's PostgreSQL type OID, in the query's order."""
    probe = sql.SQL("select * from ({}) as source limit 0").format(query)
    try:
        with conn.cursor() as cur:
            cur.execute(probe, params)
            returned = {col.name: col.type_code for col in cur.description}
    except psycopg.Error as exc:
        raise SourceError(f"job {spec.name}: the features SQL failed: {str(exc).strip()}") from exc
    expected = [spec.entity.key, *spec.features]
    missing = [c for c in expected if c not in returned]
    extra = [c for c in returned if c not in expected]
    if missing or extra:
        problems = [f"does not return {', '.join(missing)} (declared in the spec)"] if missing else []
        problems += [f"returns {', '.join(extra)} (not described in the spec)"] if extra else []
        raise SourceError(
            f"job {spec.name}: the features SQL {' and '.join(problems)}; it returns "
            f"{', '.join(returned)}: make its columns the spec's key and features"
        )
    key_oids = _KEY_TYPES[spec.entity.type][0]
    wrong = [] if returned[spec.entity.key] in key_oids else [f"{spec.entity.key} (key, {spec.entity.type})"]
    wrong += [
        f"{name} ({feature.kind})"
        for name, feature in spec.features.items()
        if returned[name] not in _PG_TYPES[feature.kind]
    ]
    if wrong:
        raise SourceError(
            f"job {spec.name}: columns of the wrong SQL type for their kind: {', '.join(wrong)}"
        )
    return returned


def find_bad_rows(frame: pd.DataFrame, spec: JobSpec) -> pd.Series:
    """The reason each row cannot be scored, or None; first failing check wins.

    A cheap screen (a few vectorized comparisons per input, no strings) finds the rows any check
    could flag; the checks that name a reason then run on those rows only, usually none."""
    key = frame[spec.entity.key]
    duplicated = (key.duplicated(keep=False) & key.notna()).to_numpy()
    suspect = key.isna().to_numpy() | duplicated | _screen(frame, spec)
    reasons = np.full(len(frame), None, dtype=object)
    if suspect.any():
        reasons[suspect] = _reasons(frame[suspect], duplicated[suspect], spec)
    return pd.Series(reasons, index=frame.index, dtype=object)


def _screen(frame: pd.DataFrame, spec: JobSpec) -> np.ndarray:
    """Rows that some feature check could flag (a superset of the bad rows)."""
    suspect = np.zeros(len(frame), dtype=bool)
    for name, feature in spec.features.items():
        column = frame[name]
        if feature.kind != "numeric":
            if feature.missing == "reject":
                suspect |= column.isna().to_numpy()
            if feature.kind == "categorical" and feature.unknown == "reject":
                suspect |= (column.notna() & ~column.isin(feature.categories)).to_numpy()
            continue
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)  # a view for float64 columns
        with np.errstate(invalid="ignore"):
            suspect |= np.isinf(values)
            if feature.min is not None:
                suspect |= values < feature.min
            if feature.max is not None:
                suspect |= values > feature.max
        missing = np.isnan(values)
        if feature.missing == "reject":
            suspect |= missing
        elif column.dtype.kind != "f":  # a NaN that pandas does not call missing: not a finite number
            suspect |= missing & column.notna().to_numpy()
    return suspect


def _reasons(frame: pd.DataFrame, duplicated: np.ndarray, spec: JobSpec) -> np.ndarray:
    """Each suspect row's reason (None when it passes every check after all)."""
    reasons = np.full(len(frame), None, dtype=object)

    def flag(mask, reason) -> None:
        mask = np.asarray(mask, dtype=bool) & (reasons == None)  # noqa: E711 (elementwise)
        if mask.any():
            reasons[mask] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[mask]

    flag(frame[spec.entity.key].isna(), "null key")
    flag(duplicated, "duplicate key")
    for name, feature in spec.features.items():
        column = frame[name]
        if feature.missing == "reject":
            flag(column.isna(), f"{name}: missing")
        if feature.kind == "numeric":
            values = column.to_numpy(dtype=float, na_value=np.nan)
            flag(
                np.isinf(values) | (np.isnan(values) & column.notna().to_numpy()),
                f"{name}: not a finite number",
            )
            if feature.min is not None:
                flag(values < feature.min, f"{name}: below the minimum {feature.min:g}")
            if feature.max is not None:
                flag(values > feature.max, f"{name}: above the maximum {feature.max:g}")
        elif feature.kind == "categorical" and feature.unknown == "reject":
            unknown = column.notna() & ~column.isin(feature.categories)
            flag(unknown, (f"{name}: unknown category " + column.astype(str)).to_numpy())
    return reasons


def matrix_columns(spec: JobSpec) -> list[str]:
    """Names of the model's input columns, in order."""
    columns: list[str] = []
    for name, feature in spec.features.items():
        if feature.kind == "categorical":
            columns += [f"{name}={category}" for category in feature.categories]
        else:
            columns.append(name)
    return columns + list(spec.derived)


def to_matrix(frame: pd.DataFrame, spec: JobSpec) -> np.ndarray:
    """Encode checked rows as float32: numbers as they are (NaN when missing and imputed later by the
    model), booleans as 0/1, categories one-hot (all zeros when missing or unknown), then derived."""
    zero_filled = {n: frame[n].fillna(0) for n, f in spec.features.items() if f.missing == "zero"}
    if zero_filled:  # derived functions see the same cleaned values as the model
        frame = frame.assign(**zero_filled)
    if all(f.kind == "numeric" for f in spec.features.values()):
        # Filled column by column: no intermediate copy of the whole frame.
        numbers = np.empty((len(frame), len(spec.features)), dtype=np.float32)
        for j, name in enumerate(spec.features):
            numbers[:, j] = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        parts = [numbers]
    else:
        parts = []
        for name, feature in spec.features.items():
            column = frame[name]
            if feature.kind == "categorical":
                values = column.to_numpy(dtype=object)
                parts += [(values == category).astype(np.float32) for category in feature.categories]
                continue
            parts.append(column.to_numpy(dtype=np.float32, na_value=np.nan))
    for name, function in spec.derived_functions.items():
        values = np.asarray(function(frame), dtype=np.float32)
        if values.shape != (len(frame),):
            raise SourceError(f"job {spec.name}: derived feature {name} returned shape {values.shape}")
        parts.append(values[:, None])
    if not parts or len(frame) == 0:
        return np.empty((len(frame), len(matrix_columns(spec))), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.column_stack(parts)


def baseline_values(matrix: np.ndarray, spec: JobSpec) -> np.ndarray:
    """The baseline rule's score: one input column, signed so that higher means more likely positive,
    missing values at the column's median."""
    rule = spec.model.baseline
    values = matrix[:, matrix_columns(spec).index(rule.feature)].astype(np.float64)
    fill = np.nanmedian(values) if np.isfinite(values).any() else 0.0
    values = np.where(np.isnan(values), fill, values)
    return values if rule.direction == "higher_is_positive" else -values
