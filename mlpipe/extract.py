"""Reading a job's sources: population plans, feature chunks by key range, labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from mlpipe.copyio import copy_out
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


@dataclass(frozen=True)
class Chunk:
    """A half-open key range [key_lo, key_hi); None means unbounded. The last chunk also takes
    rows whose key is null, so that they reach quarantine instead of vanishing."""

    chunk_no: int
    key_lo: int | str | None
    key_hi: int | str | None
    is_last: bool


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
    wrong = [] if returned[spec.entity.key] in _KEY_TYPES[spec.entity.type][0] else [spec.entity.key]
    wrong += [name for name, f in spec.features.items() if returned[name] not in _PG_TYPES[f.kind]]
    if wrong:
        raise SourceError(
            f"job {spec.name}: " + "; ".join(_type_advice(conn, spec, c, returned[c]) for c in wrong)
        )
    return returned


# What to do when a column's SQL type does not fit its kind, by kind ({c}: the column).
_ADVICE = {
    "boolean": "make the SQL return a boolean (`{c} = 1 as {c}` or `{c}::boolean`), or declare kind: numeric",
    "numeric": "cast it to a number in the SQL (`{c}::float8`), or declare kind: categorical",
    "categorical": "cast it to text in the SQL (`{c}::text`)",
    "bigint": "cast the key to bigint in the SQL (`{c}::bigint`), or declare entity.type: text",
    "text": "cast the key to text in the SQL (`{c}::text`), or declare entity.type: bigint",
}


def _type_advice(conn: psycopg.Connection, spec: JobSpec, column: str, oid: int) -> str:
    """One column whose SQL type does not fit the spec: what, observed, allowed, what to do."""
    info = conn.adapters.types.get(oid)
    observed = info.name if info else f"type oid {oid}"
    if column == spec.entity.key:
        kind, what = spec.entity.type, f"key {column} is declared {spec.entity.type}"
    else:
        kind = spec.features[column].kind
        what = f"column {column} is kind: {kind}"
    allowed = ", ".join(sorted({t.name for o in _allowed_oids(kind) if (t := conn.adapters.types.get(o))}))
    advice = _ADVICE[kind].format(c=column)
    return f"{what} but the features SQL returns {observed} (allowed: {allowed}): {advice}"


def _allowed_oids(kind: str) -> set[int]:
    return _KEY_TYPES[kind][0] if kind in _KEY_TYPES else _PG_TYPES[kind]


def features_query(spec: JobSpec, chunk: Chunk | None = None, keys_table: str | None = None) -> sql.Composed:
    """The job's features SQL, restricted to one chunk's key range (and to the keys listed in
    `keys_table`, a table of entity_id in the data schema: a top-up's new entities)."""
    source = sql.SQL(spec.sql("features"))  # the job's own SQL file, trusted like code
    key = sql.SQL("source.{}").format(sql.Identifier(spec.entity.key))
    conditions = []
    if chunk is not None and chunk.key_lo is not None:
        conditions.append(sql.SQL("{} >= %(key_lo)s").format(key))
    if chunk is not None and chunk.key_hi is not None:
        conditions.append(sql.SQL("{} < %(key_hi)s").format(key))
    if keys_table is not None:
        conditions.append(
            sql.SQL("{} in (select entity_id from {})").format(key, sql.Identifier("mlpipe_data", keys_table))
        )
    if not conditions:
        return sql.SQL("select * from ({}) as source").format(source)
    in_range = sql.SQL(" and ").join(conditions)
    if chunk is not None and chunk.is_last and keys_table is None:
        in_range = sql.SQL("({}) or {} is null").format(in_range, key)
    return sql.SQL("select * from ({}) as source where {}").format(source, in_range)


def _params(as_of: date, chunk: Chunk | None = None) -> dict:
    params: dict = {"as_of": as_of}
    if chunk is not None:
        params.update(key_lo=chunk.key_lo, key_hi=chunk.key_hi)
    return params


def check_features_source(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> None:
    """Fail before any work when the features SQL does not return what the spec describes."""
    check_source_columns(conn, spec, features_query(spec), _params(as_of))


# The SQL type each column is read as: every accepted source type converts to it exactly (integers
# up to 2**53; numeric and real as their text would parse), so the reader sees one type per kind.
_READ_AS = {
    "numeric": "float8",
    "categorical": "text",
    "boolean": "boolean",
    "bigint": "bigint",
    "text": "text",
}


def read_features(
    conn: psycopg.Connection,
    spec: JobSpec,
    as_of: date,
    chunk: Chunk | None = None,
    keys_table: str | None = None,
) -> pd.DataFrame:
    """Raw feature rows as of `as_of` for one chunk (or everything), read in binary into Arrow
    (copyio.copy_out): the key, then each feature (numbers as float64, categories as strings)."""
    kinds = {spec.entity.key: spec.entity.type} | {name: f.kind for name, f in spec.features.items()}
    columns = sql.SQL(", ").join(
        sql.SQL("source.{}::{}").format(sql.Identifier(name), sql.SQL(_READ_AS[kind]))  # constants
        for name, kind in kinds.items()
    )
    query = sql.SQL("select {} from ({}) as source").format(columns, features_query(spec, chunk, keys_table))
    try:
        table = copy_out(conn, query, _params(as_of, chunk), source_types(spec))
    except psycopg.OperationalError:
        raise  # the connection, not the SQL: the chunk task retries it
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.errors.DataException):  # a value its column's type cannot take
            check_source_columns(conn, spec, features_query(spec), _params(as_of))
        raise SourceError(f"job {spec.name}: reading features as of {as_of} failed: {exc}") from exc
    # An integer key with a NULL in it would become float64 (NaN): keep it an exact, nullable integer.
    nullable_key = table.column(spec.entity.key).null_count > 0
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get if nullable_key else None)


# Key quantiles one planning pass returns: chunk bounds land on them, so a chunk holds chunk_rows
# give or take population / _PLAN_GRID rows.
_PLAN_GRID = 4096


def plan_chunks(
    conn: psycopg.Connection,
    spec: JobSpec,
    as_of: date,
    chunk_rows: int,
    population: sql.Composable | None = None,
) -> tuple[int, list[Chunk]]:
    """Count the population as of `as_of` (the job's, or the keys `population` selects) and cut its
    keys into ranges of about chunk_rows, in one pass: the count and a grid of key quantiles (one
    sort of the keys, no numbering of every row)."""
    population = population or sql.SQL(spec.sql("population"))
    key = sql.SQL("population.{}").format(sql.Identifier(spec.entity.key))
    try:
        with conn.transaction():
            # The keys' sort stays in memory up to a few million keys; this is the server's, for a second.
            conn.execute("set local work_mem = '64MB'")
            count, keyed, grid = conn.execute(
                sql.SQL(
                    "select count(*), count({key}), percentile_disc(%(grid)s::float8[]) within group "
                    "(order by {key}) from ({population}) as population"
                ).format(key=key, population=population),
                {**_params(as_of), "grid": [i / _PLAN_GRID for i in range(_PLAN_GRID)]},
            ).fetchone()
    except psycopg.Error as exc:
        raise SourceError(
            f"job {spec.name}: the population SQL failed as of {as_of}: {str(exc).strip()}"
        ) from exc
    if not keyed:
        return count, [Chunk(0, None, None, True)]
    # grid[g] is the key at 0-based position ceil(g * keyed / _PLAN_GRID) - 1: each chunk starts at
    # the grid point at or just before a multiple of chunk_rows (exactly on it up to _PLAN_GRID keys).
    bounds = [grid[0]]
    for position in range(chunk_rows, keyed, chunk_rows):
        bound = grid[min((position + 1) * _PLAN_GRID // keyed, _PLAN_GRID - 1)]
        if bound > bounds[-1]:
            bounds.append(bound)
    highs = [*bounds[1:], None]
    lows = [None, *bounds[1:]]  # the first chunk has no lower bound
    chunks = [
        Chunk(i, lo, hi, is_last=(i == len(bounds) - 1))
        for i, (lo, hi) in enumerate(zip(lows, highs, strict=True))
    ]
    return count, chunks


def read_labels(conn: psycopg.Connection, spec: JobSpec, cutoff: date) -> pd.DataFrame:
    """(key, label) for every entity the label SQL knows at `cutoff`, over the spec's horizon."""
    key_type = source_types(spec)[spec.entity.key]
    try:
        table = copy_out(
            conn,
            sql.SQL(spec.sql("labels")),
            {"cutoff": cutoff, "horizon_days": spec.training.horizon_days, "as_of": cutoff},
            {spec.entity.key: key_type, "label": pa.int64()},
        )
    except (psycopg.Error, pa.ArrowInvalid) as exc:
        raise SourceError(f"job {spec.name}: the labels SQL failed for cutoff {cutoff}: {exc}") from exc
    labels = table.to_pandas()
    if list(labels.columns) != [spec.entity.key, "label"]:
        raise SourceError(f"job {spec.name}: the labels SQL must return ({spec.entity.key}, label)")
    if not labels["label"].isin([0, 1]).all():
        raise SourceError(f"job {spec.name}: labels must be 0 or 1 (cutoff {cutoff})")
    return labels
