"""Daily scoring of a whole population: one run per (job, day), chunked by key range, then published.

ScoringRun holds the (job, day) advisory lock for the whole run on its own connection, so a second
run fails at once and a crashed run's lock dies with its connection. The chunks themselves are in
mlpipe.chunks.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import psycopg
from pydantic import SecretStr

from mlpipe import copyio, drift, publish, registry, rollout, runs, validate
from mlpipe.chunks import HISTOGRAM_BINS, ChunkResult, RunContext, spec_digest
from mlpipe.db import DatabaseError, connect, connection
from mlpipe.errors import RunLockedError, SpecError, UsageError
from mlpipe.extract import Chunk, check_features_source, plan_chunks
from mlpipe.features import matrix_columns
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

# A lost connection outside the chunks (a database restart) is retried like a chunk's I/O error.
RECONNECT_ATTEMPTS = 3
RECONNECT_DELAY_S = 5


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
        self.timings: dict = {}
        self.spec_digest: str | None = None
        self.rollout: rollout.Rollout | None = None
        self.challenger_share = 0.0
        self._loading: Future | None = None  # the models' load in a thread (a top-up loads them itself)

    @classmethod
    def begin(
        cls, url: str, settings: Settings, spec: JobSpec, as_of: date, model_version: str | None = None
    ) -> ScoringRun:
        """Take the (job, day) lock, resolve and verify the model, create the run table, plan chunks."""
        spec.check_as_of(as_of)
        run = cls(url, settings, spec, as_of)
        return run._started(lambda: run._start(model_version))

    def _started(self, start: Callable[[], None]) -> ScoringRun:
        """Run the start-up step; on any failure mark the run failed (one line for a lost connection)."""
        try:
            start()
        except psycopg.OperationalError as exc:
            self._fail(exc)
            raise self._lost_connection("while planning", exc) from exc
        except BaseException as exc:
            self._fail(exc)
            raise
        return self

    def _start(self, model_version: str | None) -> None:
        conn, spec, as_of = self.conn, self.spec, self.as_of
        if not runs.try_lock(conn, "score", spec.name, as_of):
            raise RunLockedError(
                f"{runs.lock_holder(conn, 'score', spec.name, as_of)} is already scoring {spec.name} "
                f"for {as_of}; wait for it to finish (`mlpipe runs`) and run again"
            )
        self._check_history_window()
        # The plan (a pass over the population) needs neither the models nor the run: it runs on its
        # own connection while they load. A crashed run that is resumed brings its own plan.
        planning = None if runs.crashed(conn, "score", spec.name, as_of) else self._plan_ahead()
        self._preload_reader()
        with conn.transaction():
            publish.ensure_job_tables(conn, spec)
        self.model = registry.resolve(conn, spec.name, model_version)
        self._check_model(self.model, load=False)
        self.challenger = self._challenger()
        self._load_models_ahead()
        check_features_source(conn, spec, as_of)
        if not self._resume_crashed_run():
            self._new_run(planning or self._plan_ahead())
        self.timings["start_s"] = round(time.monotonic() - self.started, 3)  # until the chunks may start
        log.info(
            "run %s: %s as of %s with %s, %d entities in %d chunks",
            self.run_id,
            spec.name,
            as_of,
            self.model.model_version,
            self.population,
            len(self.chunks),
        )

    def _plan_ahead(self) -> Future:
        """Plan the chunks in a thread of its own; the future gives (population, chunks, seconds)."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlpipe-plan")
        try:
            return pool.submit(self._plan)
        finally:
            pool.shutdown(wait=False)  # the plan finishes on its own; nothing else runs there

    def _load_models_ahead(self) -> None:
        """Load and verify the models in a thread while the run starts and its first chunks read (the
        XGBoost import alone takes ~0.8 s): a chunk loads its model only after its read, waiting for
        this load (a tampered artifact fails it before it writes anything), and `finish` re-raises
        this load's error before the gate."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlpipe-models")
        try:
            self._loading = pool.submit(self._load_models)
        finally:
            pool.shutdown(wait=False)

    def _load_models(self) -> None:
        for model in (self.model, self.challenger):
            if model is not None:
                model.load()  # verified and cached per process: the chunks' load() returns it
        # Only once the models are loaded: GX importing in its thread while XGBoost imports here can
        # deadlock on a module both import (narwhals, seen as _DeadlockError).
        validate.warm_up()

    def _preload_reader(self) -> None:
        """The chunks' reader loads the server's type catalogue once per process: in a thread now,
        while the models load, not in the first chunk (a failure here is the chunk's to report)."""

        def preload() -> None:
            try:
                with connection(self.url, autocommit=True) as conn:  # as the chunks connect
                    copyio.preload_reader(conn)
            except (psycopg.Error, DatabaseError) as exc:
                log.info("could not preload the reader's type catalogue (the first chunk will): %s", exc)

        threading.Thread(target=preload, name="mlpipe-reader-preload", daemon=True).start()

    def _plan(self) -> tuple[int, list[Chunk], float]:
        started = time.monotonic()
        with connection(self.url, autocommit=True) as conn:
            population, chunks = plan_chunks(conn, self.spec, self.as_of, self.settings.chunk_rows)
        return population, chunks, time.monotonic() - started

    def _new_run(self, planning: Future) -> None:
        conn, spec, as_of = self.conn, self.spec, self.as_of
        self.spec_digest = spec_digest(spec)
        self.run_id = runs.start(
            conn,
            "score",
            spec.name,
            as_of,
            model_id=self.model.model_id,
            challenger_model_id=self.challenger and self.challenger.model_id,
            challenger_mode=self._challenger_mode(),
            spec_digest=self.spec_digest,
        )
        if self.challenger is not None:
            rollout.record_run(conn, self.run_id, self.challenger_share, self.rollout)
        self.table = publish.create_run_table(conn, spec, self.run_id, as_of, self.model.model_version)
        if self.challenger is not None and spec.outputs.shadow:
            self.shadow_table = publish.create_run_table(
                conn, spec, self.run_id, as_of, self.challenger.model_version, kind="shadow"
            )
        waited = time.monotonic()
        self.population, self.chunks, plan_query_s = planning.result()
        # plan_s: what the run waited for the plan, after the start-up work it overlapped.
        self.timings.update(plan_s=round(time.monotonic() - waited, 3), plan_query_s=round(plan_query_s, 3))
        plan = [[c.chunk_no, c.key_lo, c.key_hi, c.is_last] for c in self.chunks]
        runs.record_plan(conn, self.run_id, self.population, plan)

    def _resume_crashed_run(self) -> bool:
        """Continue the newest crashed run of this (job, day) when it used the same models: its
        finished chunks are kept and only the missing ones run, so the result is the one an
        uninterrupted run would have published. Older or incompatible crashed runs are dropped."""
        # We hold the lock, so any run of this (job, day) still marked running has died.
        crashed = runs.crashed(self.conn, "score", self.spec.name, self.as_of)
        challenger_id = self.challenger.model_id if self.challenger else None
        share = self.challenger_share if challenger_id else None  # a rollout's step may have moved
        resumable = next(
            (
                run
                for run in crashed[:1]
                if run.model_id == self.model.model_id
                and run.challenger_model_id == challenger_id
                and rollout.run_share(self.conn, run.run_id) == share
                and run.plan is not None
                and run.spec_digest in (None, spec_digest(self.spec))  # None: from before digests
                and publish.run_table_exists(self.conn, publish.run_table_name(self.spec, run.run_id))
            ),
            None,
        )
        for run in crashed:
            if run is not resumable:
                self._abandon(run.run_id)
        if resumable is None:
            return False
        self.run_id, self.population = resumable.run_id, resumable.population
        self.spec_digest = spec_digest(self.spec)
        self.table = publish.run_table_name(self.spec, self.run_id)
        if self.challenger is not None and self.spec.outputs.shadow:
            self.shadow_table = publish.run_table_name(self.spec, self.run_id, "shadow")
        self.chunks = [Chunk(no, lo, hi, last) for no, lo, hi, last in resumable.plan]
        done = runs.take_over(self.conn, self.run_id)
        self.timings.update(plan_s=0.0, resumed_chunks=done)
        log.warning(
            "run %s of %s for %s had crashed; resuming it (%d of %d chunks were done)",
            self.run_id,
            self.spec.name,
            self.as_of,
            done,
            len(self.chunks),
        )
        return True

    def _check_history_window(self) -> None:
        """Refuse a day that retention would drop as soon as it is published."""
        newest = publish.newest_published_day(self.conn, self.spec)
        keep = self.spec.outputs.history_days
        if newest is not None and (newest - self.as_of).days >= keep:
            raise UsageError(
                f"{self.as_of} is outside the {keep}-day history of {self.spec.name} (newest day {newest}); "
                "raise outputs.history_days to keep older days"
            )

    def _check_model(self, model: ModelVersion, *, load: bool = True) -> None:
        """Fail now, not in every chunk, if the artifact is missing or tampered with (its checksum;
        with `load` off the run loads it in a thread, see `_load_models_ahead`), or if the spec's
        features no longer match the ones the model was trained on."""
        if load:
            model.load()
        else:
            model.verify()  # before the run's row exists: a changed artifact leaves no trace
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
        """A running (or paused) rollout's challenger at its step's share; else the registry's
        challenger at the spec's fixed share (or in shadow only)."""
        outputs, job = self.spec.outputs, self.spec.name
        current = rollout.active(self.conn, job)
        if current is not None and current.model_id != self.model.model_id:
            self.rollout, self.challenger_share = current, current.share
            challenger = registry.get(self.conn, self.spec.name, model_id=current.model_id)
        else:
            if not outputs.shadow and outputs.challenger_share == 0:
                return None
            challenger = registry.challenger(self.conn, self.spec.name)
            if challenger is None or challenger.model_id == self.model.model_id:
                log.warning("job %s asks for a challenger but has none; scoring with the champion only", job)
                return None
            self.challenger_share = outputs.challenger_share
        self._check_model(challenger, load=False)
        return challenger

    def _challenger_mode(self) -> str | None:
        if self.challenger is None:
            return None
        outputs = self.spec.outputs
        modes = [m for m, on in (("shadow", outputs.shadow), ("ab", self.challenger_share > 0)) if on]
        return "+".join(modes)

    def _abandon(self, run_id: int) -> None:
        runs.abandon(self.conn, run_id)
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
        return RunContext(
            url=SecretStr(self.url),
            spec_path=str(self.spec.folder / "job.yaml"),
            spec_digest=self.spec_digest,
            as_of=self.as_of,
            run_id=self.run_id,
            table=self.table,
            model=self.model,
            threshold=self.spec.outputs.threshold,
            challenger=self.challenger,
            shadow_table=self.shadow_table,
            challenger_share=self.challenger_share if self.challenger else 0.0,
            reasons=self.spec.outputs.reasons,
        )

    def __enter__(self) -> ScoringRun:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Any failure before publish (a chunk task, a gate) marks the run failed and drops its table.
        if exc is not None:
            self._fail(exc)
            if isinstance(exc, psycopg.OperationalError):  # a chunk that ran out of retries
                raise self._lost_connection("while scoring chunks", exc) from exc
        self.close()

    def finish(self, results: list[ChunkResult]) -> RunSummary:
        """Check the counts, index the table, publish in one short transaction, record the run.
        A connection lost on the way (a database restart) is retried on a new connection that
        takes the (job, day) lock again; every step is safe to repeat."""
        self.timings["chunks_s"] = round(time.monotonic() - self.started - self.timings.get("plan_s", 0.0), 3)
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                return self._finish(results)
            except psycopg.OperationalError as exc:
                if attempt == RECONNECT_ATTEMPTS:
                    raise self._lost_connection("before publish", exc) from exc
                log.warning(
                    "run %s lost its database connection before publish (%s); retrying in %ss",
                    self.run_id,
                    _first_line(exc),
                    RECONNECT_DELAY_S,
                )
                time.sleep(RECONNECT_DELAY_S)
                self._reconnect()
        raise AssertionError("unreachable")

    def _finish(self, results: list[ChunkResult]) -> RunSummary:
        if self._loading is not None:
            self._loading.result()  # the models' load error, if every chunk was done already (resumed)
        scored, quarantined, histogram, inputs = self._tally(results)
        # The table is analyzed in the server (and indexed, if a resumed run's older table has no key
        # index) while the gate runs here. If the gate fails, the table is dropped with the run.
        with ThreadPoolExecutor(max_workers=1) as pool:
            indexing = pool.submit(self._index_tables)
            try:
                self._gate(results, histogram, inputs)
            finally:
                index_error = indexing.exception()  # waits; a gate failure is the one to report
        if index_error is not None:
            raise index_error
        swap = time.monotonic()
        moved = self._publish()
        self.timings["publish_s"] = round(time.monotonic() - swap, 4)
        dropped = publish.apply_retention(
            self.conn,
            self.spec,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            attempts=self.settings.publish_retries,
        )
        self.timings["retention_dropped_days"] = len(dropped)
        return self._record(results, scored, quarantined, histogram, inputs, moved)

    def _tally(self, results: list[ChunkResult]) -> tuple[int, int, list, dict]:
        """Rows scored and quarantined (recorded now), the score histogram and the drift counts."""
        scored = sum(r.rows_scored for r in results)
        quarantined = sum(r.rows_quarantined for r in results)
        runs.record_counts(self.conn, self.run_id, scored, quarantined)
        histogram = np.sum([r.histogram for r in results], axis=0).tolist() if results else []
        inputs = functools.reduce(drift.add, (r.inputs for r in results), {})
        return scored, quarantined, histogram, inputs

    def _gate(self, results: list, histogram: list, inputs: dict, whole_day: bool = True) -> None:
        """The output gate on the run's chunks (GateFailed stops the run before publish)."""
        output = validate.RunOutput(
            self.spec,
            self.as_of,
            self.run_id,
            self.table,
            self.population,
            results,
            histogram,
            inputs,
            self.model.reference.get("histograms"),
            whole_day,
        )
        gated = time.monotonic()
        try:
            validate.output_gate(self.conn, output)
        finally:
            self.timings["gate_s"] = round(time.monotonic() - gated, 3)

    def _record(
        self, results: list, scored: int, quarantined: int, histogram: list, inputs: dict, moved: bool
    ) -> RunSummary:
        """Timings, the score histogram and drift counts on the run; its summary."""
        self.timings["total_s"] = round(time.monotonic() - self.started, 3)
        score_histogram = {"bins": HISTOGRAM_BINS, "range": [0, 1], "counts": histogram}
        runs.record_result(self.conn, self.run_id, self.timings, score_histogram, inputs or None)
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

    def _publish(self) -> bool:
        if runs.status(self.conn, self.run_id) == "published":  # a retry after the commit got through
            return publish.view_shows(self.conn, self.spec, self.run_id)
        return publish.publish(
            self.conn,
            self.spec,
            self.as_of,
            self.run_id,
            self.table,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            attempts=self.settings.publish_retries,
            shadow_table=self.shadow_table,
        )

    def _index_tables(self) -> None:
        started = time.monotonic()
        with connection(self.url, autocommit=True) as conn:
            for table in (self.table, self.shadow_table):
                if table is not None:
                    publish.index_run_table(conn, table)
        self.timings["index_s"] = round(time.monotonic() - started, 3)

    def _reconnect(self) -> None:
        """A new connection that takes the (job, day) lock again (the old one died with it)."""
        self.close()
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                self.conn = connect(self.url, autocommit=True, application_name="mlpipe score")
                break
            except DatabaseError:
                if attempt == RECONNECT_ATTEMPTS:
                    raise
                time.sleep(RECONNECT_DELAY_S)
        if not runs.try_lock(self.conn, "score", self.spec.name, self.as_of):
            raise RunLockedError(
                f"run {self.run_id} lost its database connection and "
                f"{runs.lock_holder(self.conn, 'score', self.spec.name, self.as_of)} took over "
                f"{self.spec.name} for {self.as_of} meanwhile; see `mlpipe runs`"
            )

    def _lost_connection(self, stage: str, exc: BaseException) -> DatabaseError:
        run = f"run {self.run_id} of " if self.run_id else ""
        return DatabaseError(
            f"{run}{self.spec.name} for {self.as_of} lost its database connection {stage} "
            f"({_first_line(exc)}); nothing was published for that day and the previous predictions "
            "stay live: run the same command again once the database is back"
        )

    def _fail(self, exc: BaseException) -> None:
        """Mark the run failed and drop its tables, on a new connection if this one died."""
        try:
            if self.conn.closed or self.conn.broken:
                self.conn = connect(self.url, autocommit=True, application_name="mlpipe score")
            if self.run_id is not None:
                runs.fail(self.conn, self.run_id, exc)
            for table in (self.table, self.shadow_table):
                if table is not None:
                    publish.drop_run_table(self.conn, table)
        except (psycopg.OperationalError, DatabaseError) as db_down:
            # Left `running`: the next run of the day finds it dead and abandons it.
            log.warning("could not mark run %s failed: %s", self.run_id, _first_line(db_down))
        finally:
            self.close()

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()  # also releases the advisory lock


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end inclusive, refusing reversed or future ranges."""
    if start > end:
        raise UsageError(f"backfill start {start} is after its end {end}; swap them")
    if end > date.today():
        raise UsageError(f"backfill end {end} is in the future; the last day you can score is today")
    return [date.fromordinal(d) for d in range(start.toordinal(), end.toordinal() + 1)]
