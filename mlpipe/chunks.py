"""One chunk of a scoring run: a key range extracted, checked, featurized, predicted and written.

Chunks are independent: each opens its own connection and writes all of its rows or none, so they
can run in threads or on Dask workers and a task retry is safe.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from mlpipe import drift, performance, publish, validate
from mlpipe.copyio import copy_in_csv, copy_predictions
from mlpipe.db import connection
from mlpipe.errors import RunFailedError, SpecError
from mlpipe.explain import ReasonWriter, Surrogate, job_reason_names
from mlpipe.extract import Chunk, read_features
from mlpipe.features import entity_keys, find_bad_rows, to_matrix
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job

HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class RunContext:
    """What a chunk task needs; plain data, so it travels to threads and Dask workers alike."""

    url: SecretStr
    spec_path: str
    spec_digest: str  # of the spec the run planned with: a chunk refuses any other (see spec_digest)
    as_of: date
    run_id: int
    table: str
    model: ModelVersion
    threshold: float
    challenger: ModelVersion | None = None
    shadow_table: str | None = None
    challenger_share: float = 0.0
    reasons: int = 0  # top reasons per row; 0: none
    keys_table: str | None = None  # a top-up: only these keys (mlpipe_data.<table>.entity_id) are read


@dataclass(frozen=True)
class ChunkResult:
    chunk_no: int
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    seconds: float
    histogram: list[int]
    min_score: float | None = None
    max_score: float | None = None
    missing: dict | None = None
    inputs: dict | None = None  # counts in the model's drift reference bins, the score's included
    score_bins: dict | None = None  # the monitor's score bins (performance.count_bins); none with arms


def spec_digest(spec: JobSpec) -> str:
    """sha256 of everything a chunk takes from the job: the parsed spec (comments and layout of
    job.yaml aside), its features SQL and its derived-feature files."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    digest.update(spec.sql("features").encode())
    for file_name in sorted({d.function.split(":")[0] for d in spec.derived.values()}):
        path = spec.folder / file_name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def _spec(ctx: RunContext) -> JobSpec:
    """The job's spec, as the run planned with it, or a SpecError saying the run must start again."""
    # Keyed by modification time too: a long-lived worker sees an edit (and refuses it below).
    spec = _load_spec(ctx.spec_path, Path(ctx.spec_path).stat().st_mtime_ns)
    found = spec_digest(spec)
    if found != ctx.spec_digest:
        raise SpecError(
            spec.name,
            f"{ctx.spec_path} (or its SQL or derived files) changed while run {ctx.run_id} was scoring "
            f"{ctx.as_of} (planned with sha256 {ctx.spec_digest[:12]}, now {found[:12]}); the run stops "
            f"before publishing: re-run the day (`mlpipe score --job {spec.name} --as-of {ctx.as_of}`)",
        )
    return spec


@lru_cache(maxsize=32)
def _load_spec(path: str, mtime_ns: int) -> JobSpec:
    return load_job(Path(path), Settings())


@dataclass
class _CheckedRows:
    rows_in: int
    keys: np.ndarray
    matrix: np.ndarray
    rejected: tuple[pd.Series, pd.Series] | None  # (keys, reasons) of the quarantined rows
    missing: dict  # each input's missing share against its allowance (judged at the output gate)
    inputs: dict  # counts in the model's drift reference bins


def score_chunk(ctx: RunContext, chunk: Chunk) -> ChunkResult:
    """Extract, check, featurize, predict and write one key range, in one transaction."""
    started = time.monotonic()
    spec = _spec(ctx)
    with connection(ctx.url.get_secret_value()) as conn:
        done = _finished(conn, ctx.run_id, chunk)
        if done is not None:  # written by an attempt that crashed later, or by a resumed run
            return done
        rows = _read_and_check(conn, spec, ctx, chunk)
        # Verified and cached per process; after the read, which needs only the model's metadata, so
        # the first chunks read while the run loads the model (and raise its error before writing).
        model = ctx.model.load()
        scores = _predict(model, rows.matrix, ctx.model, chunk)
        with conn.transaction():
            if ctx.challenger is None:
                _write(conn, ctx, ctx.table, rows.keys, scores, ctx.model, rows.matrix)
            else:
                scores = _write_with_challenger(conn, ctx, chunk, rows.keys, rows.matrix, scores)
            if rows.rejected is not None:
                _quarantine(conn, ctx.run_id, *rows.rejected)
            result = _summarize(ctx, chunk, rows, scores, time.monotonic() - started)
            _record(conn, ctx, chunk, result)
    return result


def _read_and_check(conn, spec: JobSpec, ctx: RunContext, chunk: Chunk) -> _CheckedRows:
    """The chunk's rows, the bad ones set aside with their reasons, the good ones as the model's matrix
    and counted into the drift bins (the raw frame is freed on return: half the chunk's memory)."""
    frame = read_features(conn, spec, ctx.as_of, chunk, ctx.keys_table)
    reasons = find_bad_rows(frame, spec)
    bad = reasons.notna().to_numpy()
    rejected = (frame[spec.entity.key][bad], reasons[bad]) if bad.any() else None
    good = frame[~bad] if bad.any() else frame
    matrix = to_matrix(good, spec, trained_categories(ctx.model))
    keys = entity_keys(good, spec)
    columns = ctx.model.feature_schema["columns"]
    reference = ctx.model.reference.get("histograms")
    return _CheckedRows(
        rows_in=len(frame),
        keys=keys,
        matrix=matrix,
        rejected=rejected,
        missing=validate.missing_report(matrix, keys, columns, ctx.model.reference["features"]),
        inputs=drift.count_inputs(reference, spec, good, matrix, columns) if reference else {},
    )


def trained_categories(version: ModelVersion) -> dict[str, list[str]]:
    """Each categorical feature's categories as the model was trained with them: their positions are
    the codes it knows, whatever the spec lists today."""
    features = version.feature_schema["features"]
    return {name: f["categories"] for name, f in features.items() if f.get("kind") == "categorical"}


def _summarize(ctx: RunContext, chunk: Chunk, rows: _CheckedRows, scores, seconds: float) -> ChunkResult:
    inputs = dict(rows.inputs)
    if inputs:
        inputs[drift.SCORE] = drift.count(ctx.model.reference["histograms"][drift.SCORE], scores).tolist()
    return ChunkResult(
        chunk.chunk_no,
        rows.rows_in,
        len(rows.keys),
        rows.rows_in - len(rows.keys),
        seconds,
        histogram=np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0].tolist(),
        min_score=float(scores.min()) if len(scores) else None,
        max_score=float(scores.max()) if len(scores) else None,
        missing=rows.missing,
        inputs=inputs,
        # Per-arm rows would need per-arm bins: with a challenger or shadow the monitor scans the day.
        score_bins=performance.count_bins(scores) if ctx.challenger is None else None,
    )


def _record(conn, ctx: RunContext, chunk: Chunk, result: ChunkResult) -> None:
    """The chunk's row in mlpipe.run_chunks, with what a resumed run needs of it (its summary)."""
    conn.execute(
        """insert into mlpipe.run_chunks (run_id, chunk_no, key_lo, key_hi, rows_in, rows_scored,
               rows_quarantined, seconds, summary, worker)
           values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        [
            ctx.run_id,
            chunk.chunk_no,
            _text(chunk.key_lo),
            _text(chunk.key_hi),
            result.rows_in,
            result.rows_scored,
            result.rows_quarantined,
            result.seconds,
            Jsonb({name: getattr(result, name) for name in _SUMMARY}),
            f"{socket.gethostname()}:{os.getpid()}",
        ],
    )


_SUMMARY = ("histogram", "min_score", "max_score", "missing", "inputs", "score_bins")


def _renamed(summary: dict) -> dict:
    return {name: summary.get(name) for name in _SUMMARY}


def _finished(conn, run_id: int, chunk: Chunk) -> ChunkResult | None:
    row = conn.execute(
        """select rows_in, rows_scored, rows_quarantined, seconds, summary from mlpipe.run_chunks
           where run_id = %s and chunk_no = %s""",
        [run_id, chunk.chunk_no],
    ).fetchone()
    return None if row is None else ChunkResult(chunk.chunk_no, *row[:4], **_renamed(row[4]))


def _predict(model, matrix: np.ndarray, version: ModelVersion, chunk: Chunk) -> np.ndarray:
    scores = model.predict_proba(matrix) if len(matrix) else np.empty(0)
    if not np.isfinite(scores).all():
        raise RunFailedError(
            f"model {version.model_version} produced non-finite scores in chunk {chunk.chunk_no}"
        )
    return scores


def _percentile(scores: np.ndarray, version: ModelVersion) -> np.ndarray:
    # Against the model's out-of-time test scores: stable from day to day, one pass.
    reference = np.asarray(version.reference["scores"])
    return (100.0 * np.searchsorted(reference, scores, side="right") / len(reference)).astype(np.float32)


def _write(
    conn,
    ctx: RunContext,
    table: str,
    keys,
    scores,
    version: ModelVersion,
    matrix: np.ndarray,
    *,
    own_version: bool = False,
):
    copy_predictions(
        conn,
        publish.DATA_SCHEMA,
        table,
        keys,
        scores,
        scores >= ctx.threshold,
        _percentile(scores, version),
        version.model_version if own_version else None,
        _reasons(version, matrix, ctx) if ctx.reasons else None,
    )


def _reasons(version: ModelVersion, matrix: np.ndarray, ctx: RunContext) -> np.ndarray:
    spec = _load_spec(ctx.spec_path, Path(ctx.spec_path).stat().st_mtime_ns)  # checked by the chunk already
    surrogate, writer = explainer(version, ctx.reasons, tuple(job_reason_names(spec)))
    return writer.encode(surrogate.contributions(matrix))


_explainers: dict[tuple, tuple[Surrogate, ReasonWriter]] = {}


def explainer(
    version: ModelVersion, k: int, names: tuple[str, ...] | None = None
) -> tuple[Surrogate, ReasonWriter]:
    """The model's reason surrogate and a writer of its top k reasons as codes into `names` (the job's,
    which the published view names them from; by default the surrogate's own), built once per process."""
    # Per process, like the model itself: chunk tasks of a run share one (a race builds it twice).
    key = (version.model_id, k, names)
    if key not in _explainers:
        surrogate = Surrogate.from_dict(version.reference["explainer"])
        _explainers[key] = (surrogate, ReasonWriter(surrogate.features, k, list(names) if names else None))
    return _explainers[key]


def _write_with_challenger(conn, ctx: RunContext, chunk: Chunk, keys, matrix, scores) -> np.ndarray:
    """Shadow: the challenger scores everyone into its own table. Batch A/B: a stable share of
    entities is published with the challenger's score and model_version. Returns published scores."""
    challenger = _predict(ctx.challenger.load(), matrix, ctx.challenger, chunk)
    if ctx.shadow_table:
        _write(conn, ctx, ctx.shadow_table, keys, challenger, ctx.challenger, matrix)
    arm = challenger_arm(keys, ctx.challenger_share)
    _write(conn, ctx, ctx.table, keys[~arm], scores[~arm], ctx.model, matrix[~arm])
    if arm.any():
        _write(
            conn, ctx, ctx.table, keys[arm], challenger[arm], ctx.challenger, matrix[arm], own_version=True
        )
    return np.where(arm, challenger, scores)


def challenger_arm(keys: np.ndarray, share: float) -> np.ndarray:
    """Whether each entity is in the challenger's arm: a stable hash bucket of its key (the same
    every day, on every machine), so an entity stays with one model for the whole test. The arm is
    `bucket < share`: arms of growing shares nest, so a rollout step only ever adds entities."""
    if share <= 0 or len(keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    buckets = pd.util.hash_array(np.asarray(keys, dtype=object), categorize=False) % 10_000
    return buckets < round(share * 10_000)


def _quarantine(conn, run_id: int, keys: pd.Series, reasons: pd.Series) -> None:
    copy_in_csv(
        conn,
        "mlpipe",
        "quarantine",
        pa.table(
            {
                "run_id": pa.array(np.full(len(keys), run_id, dtype=np.int64)),
                "entity_id": pa.array(keys.astype("string").to_numpy(na_value=None), type=pa.string()),
                "reason": pa.array(reasons.to_numpy(dtype=object), type=pa.string()),
            }
        ),
    )


def _text(value) -> str | None:
    return None if value is None else str(value)
