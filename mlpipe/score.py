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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import pandas as pd
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from mlpipe import publish, registry, validate
from mlpipe.chunks import HISTOGRAM_BINS, ChunkResult, RunContext, spec_digest
from mlpipe.db import connect, connection
from mlpipe.errors import RunLockedError, SpecError, UsageError
from mlpipe.extract import Chunk, check_features_source, plan_chunks
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
        validate.warm_up()
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
        self._check_history_window()
        with conn.transaction():
            publish.ensure_job_tables(conn, spec)
        self.model = registry.resolve(conn, spec.name, model_version)
        self._check_model(self.model)
        self.challenger = self._challenger()
        self.numeric_block = check_features_source(conn, spec, as_of)
        self.timings = {}
        if not self._resume_crashed_run():
            self._new_run()
        log.info(
            "run %s: %s as of %s with %s, %d entities in %d chunks",
            self.run_id,
            spec.name,
            as_of,
            self.model.model_version,
            self.population,
            len(self.chunks),
        )

    def _new_run(self) -> None:
        conn, spec, as_of = self.conn, self.spec, self.as_of
        self.run_id = conn.execute(
            """insert into mlpipe.runs (job, kind, as_of, model_id, challenger_model_id, challenger_mode,
                   status, host, pid, spec_digest)
               values (%s, 'score', %s, %s, %s, %s, 'running', %s, %s, %s) returning run_id""",
            [
                spec.name,
                as_of,
                self.model.model_id,
                self.challenger and self.challenger.model_id,
                self._challenger_mode(),
                socket.gethostname(),
                os.getpid(),
                spec_digest(spec),
            ],
        ).fetchone()[0]
        self.table = publish.create_run_table(conn, spec, self.run_id, as_of, self.model.model_version)
        if self.challenger is not None and spec.outputs.shadow:
            self.shadow_table = publish.create_run_table(
                conn, spec, self.run_id, as_of, self.challenger.model_version, kind="shadow"
            )
        planned = time.monotonic()
        self.population, self.chunks = plan_chunks(conn, spec, as_of, self.settings.chunk_rows)
        self.timings["plan_s"] = round(time.monotonic() - planned, 3)
        plan = [[c.chunk_no, c.key_lo, c.key_hi, c.is_last] for c in self.chunks]
        conn.execute(
            "update mlpipe.runs set population = %s, chunks = %s, plan = %s where run_id = %s",
            [self.population, len(self.chunks), Jsonb(plan), self.run_id],
        )

    def _resume_crashed_run(self) -> bool:
        """Continue the newest crashed run of this (job, day) when it used the same models: its
        finished chunks are kept and only the missing ones run, so the result is the one an
        uninterrupted run would have published. Older or incompatible crashed runs are dropped."""
        # We hold the lock, so any run of this (job, day) still marked running has died.
        crashed = self.conn.execute(
            """select run_id, model_id, challenger_model_id, plan, population from mlpipe.runs
               where job = %s and as_of = %s and kind = 'score' and status = 'running'
               order by run_id desc""",
            [self.spec.name, self.as_of],
        ).fetchall()
        resumable = None
        if crashed:
            run_id, model_id, challenger_id, plan, population = crashed[0]
            same_models = model_id == self.model.model_id and challenger_id == (
                self.challenger.model_id if self.challenger else None
            )
            table = publish.run_table_name(self.spec, run_id)
            exists = self.conn.execute(
                "select to_regclass(%s)", [f"{publish.DATA_SCHEMA}.{table}"]
            ).fetchone()[0]
            if same_models and plan is not None and exists is not None:
                resumable = crashed[0]
        for run_id, *_ in crashed:
            if resumable is None or run_id != resumable[0]:
                self._abandon(run_id)
        if resumable is None:
            return False
        run_id, _, _, plan, population = resumable
        self.run_id, self.population = run_id, population
        self.table = publish.run_table_name(self.spec, run_id)
        if self.challenger is not None and self.spec.outputs.shadow:
            self.shadow_table = publish.run_table_name(self.spec, run_id, "shadow")
        self.chunks = [Chunk(no, lo, hi, last) for no, lo, hi, last in plan]
        done = self.conn.execute(
            "select count(*) from mlpipe.run_chunks where run_id = %s", [run_id]
        ).fetchone()[0]
        self.conn.execute(
            "update mlpipe.runs set host = %s, pid = %s, error = null where run_id = %s",
            [socket.gethostname(), os.getpid(), run_id],
        )
        self.timings.update(plan_s=0.0, resumed_chunks=done)
        log.warning(
            "run %s of %s for %s had crashed; resuming it (%d of %d chunks were done)",
            run_id,
            self.spec.name,
            self.as_of,
            done,
            len(self.chunks),
        )
        return True

    def _check_history_window(self) -> None:
        """Refuse a day that retention would drop as soon as it is published."""
        newest = self.conn.execute(
            "select max(as_of) from mlpipe.partitions where job = %s and kind = 'published'", [self.spec.name]
        ).fetchone()[0]
        keep = self.spec.outputs.history_days
        if newest is not None and (newest - self.as_of).days >= keep:
            raise UsageError(
                f"{self.as_of} is outside the {keep}-day history of {self.spec.name} (newest day {newest}); "
                "raise outputs.history_days to keep older days"
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
        if self.spec.outputs.reasons and "explainer" not in model.reference:
            raise SpecError(
                self.spec.name,
                f"outputs.reasons needs a model trained with reasons support; {model.model_version} "
                f"predates it: retrain (`mlpipe train --job {self.spec.name}`) or set outputs.reasons: 0",
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

    def _abandon(self, run_id: int) -> None:
        self.conn.execute(
            """update mlpipe.runs set status = 'abandoned', finished_at = now(),
                   error = 'the process ended without finishing (crash or kill); not resumable'
               where run_id = %s""",
            [run_id],
        )
        for kind in ("published", "shadow"):
            publish.drop_run_table(self.conn, publish.run_table_name(self.spec, run_id, kind))
        log.warning(
            "run %s of %s for %s had crashed; its partial tables were dropped",
            run_id,
            self.spec.name,
            self.as_of,
        )

    @property
    def context(self) -> RunContext:
        """What each chunk task needs; the spec digest is the one the run was planned with (a resumed
        run's own), so that a chunk refuses a spec edited since."""
        planned = self.conn.execute(
            "select spec_digest from mlpipe.runs where run_id = %s", [self.run_id]
        ).fetchone()[0]
        return RunContext(
            url=SecretStr(self.url),
            spec_path=str(self.spec.folder / "job.yaml"),
            spec_digest=planned or spec_digest(self.spec),  # runs from before the digest have none
            as_of=self.as_of,
            run_id=self.run_id,
            table=self.table,
            model=self.model,
            threshold=self.spec.outputs.threshold,
            challenger=self.challenger,
            shadow_table=self.shadow_table,
            challenger_share=self.spec.outputs.challenger_share if self.challenger else 0.0,
            numeric_block=self.numeric_block,
            reasons=self.spec.outputs.reasons,
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
        self.timings["chunks_s"] = round(time.monotonic() - self.started - self.timings.get("plan_s", 0.0), 3)
        histogram = np.sum([r.histogram for r in results], axis=0).tolist() if results else []
        # The index builds in the server while the gate runs here: two cores, not one after the other.
        # If the gate fails, the indexed table is dropped with the run like any other.
        with ThreadPoolExecutor(max_workers=1) as pool:
            indexing = pool.submit(self._index_tables)
            gated = time.monotonic()
            try:
                self._output_gate(results, histogram)
            finally:
                self.timings["gate_s"] = round(time.monotonic() - gated, 3)
                index_error = indexing.exception()  # waits; a gate failure is the one to report
        if index_error is not None:
            raise index_error
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
        dropped = publish.apply_retention(
            self.conn,
            self.spec,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            attempts=self.settings.publish_retries,
        )
        self.timings["retention_dropped_days"] = len(dropped)
        self.timings["total_s"] = round(time.monotonic() - self.started, 3)
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

    def _index_tables(self) -> None:
        started = time.monotonic()
        with connection(self.url, autocommit=True) as conn:
            for table in (self.table, self.shadow_table):
                if table is not None:
                    publish.index_run_table(conn, table)
        self.timings["index_s"] = round(time.monotonic() - started, 3)

    def _output_gate(self, results: list[ChunkResult], histogram: list[int]) -> None:
        """Great Expectations on the run's summaries before publish; records the outcome either way."""
        chunks = pd.DataFrame(
            [
                {
                    "rows_in": r.rows_in,
                    "rows_scored": r.rows_scored,
                    "rows_quarantined": r.rows_quarantined,
                    "min_score": r.min_score,
                    "max_score": r.max_score,
                    "null_scores": 0,
                }
                for r in results
            ]
        )
        previous = self.conn.execute(
            """select r.score_histogram -> 'counts' from mlpipe.partitions p join mlpipe.runs r using (run_id)
               where p.job = %s and p.kind = 'published' and p.as_of < %s and r.run_id <> %s
               order by p.as_of desc limit 1""",
            [self.spec.name, self.as_of, self.run_id],
        ).fetchone()
        psi = validate.population_stability(histogram, previous[0]) if previous and previous[0] else None
        missing = pd.DataFrame(
            [
                {
                    "chunk_no": r.chunk_no,
                    "column": name,
                    "missing_over_allowance": m["share"] - m["allowed"],
                    "sample_keys": m.get("sample_keys", []),
                }
                for r in results
                for name, m in (r.missing or {}).items()
            ],
            columns=["chunk_no", "column", "missing_over_allowance", "sample_keys"],
        )
        self.missing_over = missing[missing["missing_over_allowance"] > 0]
        failures = validate.check_output(
            chunks,
            missing,
            self.population,
            self.spec.outputs.max_quarantine_rate,
            psi,
            self.spec.outputs.max_score_psi,
        )
        gates = {"passed": not failures, "failures": [str(f) for f in failures], "score_psi": psi}
        self.conn.execute("update mlpipe.runs set gates = %s where run_id = %s", [Jsonb(gates), self.run_id])
        if failures:
            raise validate.GateFailed(
                f"the output gate of run {self.run_id} ({self.spec.name} {self.as_of})",
                failures,
                self._offending_keys(failures),
            )

    def _offending_keys(self, failures: list) -> list:
        columns = {f.column for f in failures}
        if "missing_over_allowance" in columns:
            worst = self.missing_over.sort_values("missing_over_allowance", ascending=False).iloc[0]
            return [f"{worst['column']} missing in chunk {worst['chunk_no']}", *worst["sample_keys"]]
        if "rows_quarantined" in columns:
            return [
                r[0]
                for r in self.conn.execute(
                    "select entity_id from mlpipe.quarantine where run_id = %s order by entity_id limit 5",
                    [self.run_id],
                )
            ]
        if "rows_in" in columns or "rows_scored" in columns:
            population = sql.SQL(self.spec.sql("population"))
            return [
                r[0]
                for r in self.conn.execute(
                    sql.SQL(
                        "select p.{key} from ({population}) as p where not exists "
                        "(select from {table} t where t.entity_id = p.{key}) order by 1 limit 5"
                    ).format(
                        key=sql.Identifier(self.spec.entity.key),
                        population=population,
                        table=sql.Identifier(publish.DATA_SCHEMA, self.table),
                    ),
                    {"as_of": self.as_of},
                )
            ]
        return []

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
