"""Daily scoring of a whole population: one run per (job, day), chunked by key range, then published.

ScoringRun holds the (job, day) advisory lock for the whole run on its own connection, so a second
run fails at once and a crashed run's lock dies with its connection. The chunks themselves are in
mlpipe.chunks.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from mlpipe import publish, registry
from mlpipe.chunks import HISTOGRAM_BINS, ChunkResult, RunContext
from mlpipe.db import connect
from mlpipe.errors import RunFailedError, RunLockedError, SpecError, UsageError
from mlpipe.extract import check_features_source, plan_chunks
from mlpipe.features import matrix_columns
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)


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
