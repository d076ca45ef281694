"""Daily scoring of a whole population: one run per (job, day), chunked by key range, then published.

ScoringRun holds the (job, day) advisory lock for the whole run on its own connection, so a second
run fails at once and a crashed run's lock dies with its connection. Chunks are independent: each
opens its own connection, so they can run in threads or on Dask workers.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from mlpipe import publish, registry
from mlpipe.copyio import copy_in_csv, copy_predictions
from mlpipe.db import connect, connection
from mlpipe.errors import RunFailedError, RunLockedError, SpecError, UsageError
from mlpipe.extract import Chunk, check_features_source, plan_chunks, read_features
from mlpipe.features import find_bad_rows, matrix_columns, to_matrix
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class RunContext:
    """What a chunk task needs; plain data, so it travels to threads and Dask workers alike."""

    url: SecretStr
    spec_path: str
    as_of: date
    run_id: int
    table: str
    model: ModelVersion
    threshold: float
    challenger: ModelVersion | None = None
    shadow_table: str | None = None
    challenger_share: float = 0.0


@dataclass(frozen=True)
class ChunkResult:
    chunk_no: int
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    seconds: float
    histogram: list[int]


@dataclass
class RunSummary:
    run_id: int
    job: str
    as_of: date
    model_version: str
    population: int
    rows_scored: int
    rows_quarantined: int
    chunks: int
    view_moved: bool
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**asdict(self), "as_of": self.as_of.isoformat()}


def _spec(path: str) -> JobSpec:
    # Keyed by modification time too: a long-lived worker picks up an edited spec.
    return _load_spec(path, Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _load_spec(path: str, mtime_ns: int) -> JobSpec:
    return load_job(Path(path), Settings())


def score_chunk(ctx: RunContext, chunk: Chunk) -> ChunkResult:
    """Extract, check, featurize, predict and write one key range, in one transaction."""
    started = time.monotonic()
    spec = _spec(ctx.spec_path)
    model = ctx.model.load()  # verified and cached per process
    with connection(ctx.url.get_secret_value()) as conn:
        frame = read_features(conn, spec, ctx.as_of, chunk)
        reasons = find_bad_rows(frame, spec)
        bad = reasons.notna().to_numpy()
        good = frame[~bad]
        matrix = to_matrix(good, spec)
        keys = good[spec.entity.key].to_numpy()
        scores = _predict(model, matrix, ctx.model, chunk)
        with conn.transaction():
            if ctx.challenger is None:
                _write(conn, ctx, ctx.table, keys, scores, ctx.model)
            else:
                scores = _write_with_challenger(conn, ctx, chunk, keys, matrix, scores)
            if bad.any():
                _quarantine(conn, ctx.run_id, frame[bad][spec.entity.key], reasons[bad])
            seconds = time.monotonic() - started
            conn.execute(
                """insert into mlpipe.run_chunks (run_id, chunk_no, key_lo, key_hi, rows_in, rows_scored,
                       rows_quarantined, seconds) values (%s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    ctx.run_id,
                    chunk.chunk_no,
                    _text(chunk.key_lo),
                    _text(chunk.key_hi),
                    len(frame),
                    len(good),
                    int(bad.sum()),
                    seconds,
                ],
            )
    histogram = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    return ChunkResult(chunk.chunk_no, len(frame), len(good), int(bad.sum()), seconds, histogram.tolist())


def _predict(model, matrix: np.ndarray, version: ModelVersion, chunk: Chunk) -> np.ndarray:
    scores = model.predict(matrix) if len(matrix) else np.empty(0)
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
    conn, ctx: RunContext, table: str, keys, scores, version: ModelVersion, *, own_version: bool = False
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
    )


def _write_with_challenger(conn, ctx: RunContext, chunk: Chunk, keys, matrix, scores) -> np.ndarray:
    """Shadow: the challenger scores everyone into its own table. Batch A/B: a stable share of
    entities is published with the challenger's score and model_version. Returns published scores."""
    challenger = _predict(ctx.challenger.load(), matrix, ctx.challenger, chunk)
    if ctx.shadow_table:
        _write(conn, ctx, ctx.shadow_table, keys, challenger, ctx.challenger)
    arm = challenger_arm(keys, ctx.challenger_share)
    _write(conn, ctx, ctx.table, keys[~arm], scores[~arm], ctx.model)
    if arm.any():
        _write(conn, ctx, ctx.table, keys[arm], challenger[arm], ctx.challenger, own_version=True)
    return np.where(arm, challenger, scores)


def challenger_arm(keys: np.ndarray, share: float) -> np.ndarray:
    """Whether each entity is in the challenger's arm: a stable hash of its key (the same every
    day, on every machine), so an entity stays with one model for the whole test."""
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


class ScoringRun:
    """One scoring run of (job, day): lock, plan, then `finish` checks, publishes and records."""

    def __init__(self, url: str, settings: Settings, spec: JobSpec, as_of: date) -> None:
        self.url, self.settings, self.spec, self.as_of = url, settings, spec, as_of
        self.started = time.monotonic()
        self.conn = connect(url, autocommit=True, application_name="mlpipe score")
        self.run_id: int | None = None
        self.table: str | None = None
        self.shadow_table: str | None = None

    @classmethod
    def begin(
        cls, url: str, settings: Settings, spec: JobSpec, as_of: date, model_version: str | None = None
    ) -> ScoringRun:
        """Take the (job, day) lock, resolve and verify the model, create the run table, plan chunks."""
        spec.check_as_of(as_of)
        run = cls(url, settings, spec, as_of)
        try:
            run._start(model_version)
        except BaseException as exc:
            run._fail(exc)
            raise
        return run

    def _start(self, model_version: str | None) -> None:
        conn, spec, as_of = self.conn, self.spec, self.as_of
        locked = conn.execute(
            "select pg_try_advisory_lock(hashtextextended(%s, 0))", [f"mlpipe.score:{spec.name}:{as_of}"]
        ).fetchone()[0]
        if not locked:
            raise RunLockedError(self._lock_holder_message())
        self._abandon_crashed_runs()
        with conn.transaction():
            publish.ensure_job_tables(conn, spec)
        self.model = registry.resolve(conn, spec.name, model_version)
        self._check_model(self.model)
        self.challenger = self._challenger()
        check_features_source(conn, spec, as_of)
        self.run_id = conn.execute(
            """insert into mlpipe.runs (job, kind, as_of, model_id, challenger_model_id, challenger_mode,
                   status, host, pid)
               values (%s, 'score', %s, %s, %s, %s, 'running', %s, %s) returning run_id""",
            [
                spec.name,
                as_of,
                self.model.model_id,
                self.challenger and self.challenger.model_id,
                self._challenger_mode(),
                socket.gethostname(),
                os.getpid(),
            ],
        ).fetchone()[0]
        self.table = publish.create_run_table(conn, spec, self.run_id, as_of, self.model.model_version)
        if self.challenger is not None and spec.outputs.shadow:
            self.shadow_table = publish.create_run_table(
                conn, spec, self.run_id, as_of, self.challenger.model_version, kind="shadow"
            )
        planned = time.monotonic()
        self.population, self.chunks = plan_chunks(conn, spec, as_of, self.settings.chunk_rows)
        self.timings = {"plan_s": round(time.monotonic() - planned, 3)}
        conn.execute(
            "update mlpipe.runs set population = %s, chunks = %s where run_id = %s",
            [self.population, len(self.chunks), self.run_id],
        )
        log.info(
            "run %s: %s as of %s with %s, %d entities in %d chunks",
            self.run_id,
            spec.name,
            as_of,
            self.model.model_version,
            self.population,
            len(self.chunks),
        )

    def _check_model(self, model: ModelVersion) -> None:
        """Fail now, not in every chunk, if the artifact is missing or tampered with, or if the spec's
        features no longer match the ones the model was trained on."""
        model.load()
        if model.feature_schema["columns"] != matrix_columns(self.spec):
            raise SpecError(
                self.spec.name,
                f"the features changed since {model.model_version} was trained; retrain "
                f"(`mlpipe train --job {self.spec.name}`) or restore the spec",
            )

    def _challenger(self) -> ModelVersion | None:
        outputs = self.spec.outputs
        if not outputs.shadow and outputs.challenger_share == 0:
            return None
        challenger = registry.challenger(self.conn, self.spec.name)
        if challenger is None or challenger.model_id == self.model.model_id:
            log.warning(
                "job %s asks for a challenger but has none; scoring with the champion only", self.spec.name
            )
            return None
        self._check_model(challenger)
        return challenger

    def _challenger_mode(self) -> str | None:
        if self.challenger is None:
            return None
        modes = [
            m
            for m, on in (
                ("shadow", self.spec.outputs.shadow),
                ("ab", self.spec.outputs.challenger_share > 0),
            )
            if on
        ]
        return "+".join(modes)

    def _lock_holder_message(self) -> str:
        row = self.conn.execute(
            """select run_id, host, pid, started_at from mlpipe.runs
               where job = %s and as_of = %s and kind = 'score' and status = 'running'
               order by started_at desc limit 1""",
            [self.spec.name, self.as_of],
        ).fetchone()
        holder = (
            f"run {row[0]} (pid {row[2]} on {row[1]}, started {row[3]:%Y-%m-%d %H:%M:%S})"
            if row
            else "another run"
        )
        return (
            f"{holder} is already scoring {self.spec.name} for {self.as_of}; wait for it to finish "
            "(`mlpipe runs`) and run again"
        )

    def _abandon_crashed_runs(self) -> None:
        # We hold the lock, so any run of this (job, day) still marked running has died.
        crashed = self.conn.execute(
            """update mlpipe.runs set status = 'abandoned', finished_at = now(),
                   error = 'the process ended without finishing (crash or kill)'
               where job = %s and as_of = %s and kind = 'score' and status = 'running' returning run_id""",
            [self.spec.name, self.as_of],
        ).fetchall()
        for (run_id,) in crashed:
            for kind in ("published", "shadow"):
                publish.drop_run_table(self.conn, publish.run_table_name(self.spec, run_id, kind))
            log.warning(
                "run %s of %s for %s had crashed; its partial table was dropped",
                run_id,
                self.spec.name,
                self.as_of,
            )

    @property
    def context(self) -> RunContext:
        return RunContext(
            url=SecretStr(self.url),
            spec_path=str(self.spec.folder / "job.yaml"),
            as_of=self.as_of,
            run_id=self.run_id,
            table=self.table,
            model=self.model,
            threshold=self.spec.outputs.threshold,
            challenger=self.challenger,
            shadow_table=self.shadow_table,
            challenger_share=self.spec.outputs.challenger_share if self.challenger else 0.0,
        )

    def __enter__(self) -> ScoringRun:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Any failure before publish (a chunk task, a gate) marks the run failed and drops its table.
        if exc is not None:
            self._fail(exc)
        self.close()

    def finish(self, results: list[ChunkResult]) -> RunSummary:
        """Check the counts, index the table, publish in one short transaction, record the run."""
        scored = sum(r.rows_scored for r in results)
        quarantined = sum(r.rows_quarantined for r in results)
        rows_in = sum(r.rows_in for r in results)
        self.timings["chunks_s"] = round(time.monotonic() - self.started - self.timings["plan_s"], 3)
        gates = self._gates(rows_in, scored, quarantined)
        self.conn.execute("update mlpipe.runs set gates = %s where run_id = %s", [Jsonb(gates), self.run_id])
        failed = [g for g in gates.values() if not g["passed"]]
        if failed:
            raise RunFailedError(
                f"run {self.run_id} ({self.spec.name} {self.as_of}) stopped before publishing: "
                + "; ".join(g["message"] for g in failed)
                + ". The previous predictions stay live; see `mlpipe runs` and mlpipe.quarantine."
            )
        indexed = time.monotonic()
        publish.index_run_table(self.conn, self.table)
        if self.shadow_table:
            publish.index_run_table(self.conn, self.shadow_table)
        self.timings["index_s"] = round(time.monotonic() - indexed, 3)
        swap = time.monotonic()
        moved = publish.publish(
            self.conn,
            self.spec,
            self.as_of,
            self.run_id,
            self.table,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            attempts=self.settings.publish_retries,
            shadow_table=self.shadow_table,
        )
        self.timings["publish_s"] = round(time.monotonic() - swap, 4)
        self.timings["total_s"] = round(time.monotonic() - self.started, 3)
        histogram = np.sum([r.histogram for r in results], axis=0).tolist() if results else []
        self.conn.execute(
            """update mlpipe.runs set rows_scored = %s, rows_quarantined = %s, timings = %s,
                   score_histogram = %s where run_id = %s""",
            [
                scored,
                quarantined,
                Jsonb(self.timings),
                Jsonb({"bins": HISTOGRAM_BINS, "range": [0, 1], "counts": histogram}),
                self.run_id,
            ],
        )
        return RunSummary(
            self.run_id,
            self.spec.name,
            self.as_of,
            self.model.model_version,
            self.population,
            scored,
            quarantined,
            len(results),
            moved,
            self.timings,
        )

    def _gates(self, rows_in: int, scored: int, quarantined: int) -> dict:
        limit = self.spec.outputs.max_quarantine_rate
        rate = quarantined / rows_in if rows_in else 0.0
        return {
            "complete": {
                "passed": rows_in >= self.population,
                "message": f"the features SQL returned {rows_in} rows for a population of {self.population}"
                " (entities without a feature row would go unscored)",
            },
            "quarantine_rate": {
                "passed": rate <= limit,
                "message": f"{quarantined} of {rows_in} rows quarantined ({rate:.2%}; "
                f"the job allows {limit:.2%})",
            },
            "scored_rows": {
                "passed": scored > 0 or self.population == 0,
                "message": f"no rows could be scored out of {rows_in}",
            },
        }

    def _fail(self, exc: BaseException) -> None:
        if self.conn.closed:
            return
        if self.run_id is not None:
            self.conn.execute(
                "update mlpipe.runs set status = 'failed', finished_at = now(), error = %s where run_id = %s",
                [f"{type(exc).__name__}: {exc}"[:4000], self.run_id],
            )
        for table in (self.table, self.shadow_table):
            if table is not None:
                publish.drop_run_table(self.conn, table)
        self.close()

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()  # also releases the advisory lock


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end inclusive, refusing reversed or future ranges."""
    if start > end:
        raise UsageError(f"backfill start {start} is after its end {end}; swap them")
    if end > date.today():
        raise UsageError(f"backfill end {end} is in the future; the last day you can score is today")
    return [date.fromordinal(d) for d in range(start.toordinal(), end.toordinal() + 1)]
