"""Intraday top-up: score the entities of the current population that the live day lacks and insert
them into that day's partition, as a run of its own (kind `topup`, its own run_id on every new row).

Its population and features are read as of the moment it starts (a customer who signed up at 10:00
is in a 14:00 top-up), recorded on the run as `source_as_of`; its rows are stored under the live day.
It holds the same (job, day) lock as a scoring run of that day, scores through the same chunks,
checks, quarantine and output gate (less the whole-day distribution gates), and inserts its rows in
one transaction: a kill at any point before that commit leaves the day as it was, and the next
top-up drops what the dead one left. Entities the day already has, or that the day's runs
quarantined, are not scored again, so a second top-up finds nothing to do.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import date

import psycopg
from psycopg import sql

from mlpipe import publish, registry, runs, validate
from mlpipe.chunks import ChunkResult, RunContext, spec_digest
from mlpipe.errors import RunLockedError, UsageError
from mlpipe.extract import check_features_source, plan_chunks
from mlpipe.registry import ModelVersion
from mlpipe.score import RunSummary, ScoringRun
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)


def keys_table_name(spec: JobSpec, run_id: int) -> str:
    return f"{spec.name}_k{run_id}"


class TopUp(ScoringRun):
    """A top-up of the day predictions.<job> shows: `begin`, score `chunks` with `context`, `finish`."""

    def __init__(self, url: str, settings: Settings, spec: JobSpec) -> None:
        super().__init__(url, settings, spec, None)
        self.keys_table: str | None = None
        self.day_table: str | None = None
        self.moment = None  # now(), read from the database when the top-up starts

    @classmethod
    def begin(
        cls,
        url: str,
        settings: Settings,
        spec: JobSpec,
        as_of: date | None = None,
        model_version: str | None = None,
    ) -> TopUp:
        """Take the live day's lock, find the entities it lacks as of now, plan their chunks."""
        if as_of is not None or model_version is not None:
            raise UsageError(
                "--new-only tops up the day predictions shows, as of now, with the model that scored "
                "that day: drop --as-of and --model"
            )
        run = cls(url, settings, spec)
        return run._started(run._start_topup)

    def _start_topup(self) -> None:
        conn, spec = self.conn, self.spec
        live = conn.execute(
            """select v.as_of, p.run_id, p.table_name, r.model_id, r.challenger_model_id, r.challenger_mode
               from mlpipe.live_views v
               join mlpipe.partitions p on p.job = v.job and p.kind = 'published' and p.as_of = v.as_of
               join mlpipe.runs r on r.run_id = p.run_id
               where v.job = %s""",
            [spec.name],
        ).fetchone()
        if live is None:
            raise UsageError(
                f"nothing of {spec.name} is published yet, so there is no day to top up: "
                f"score a day first (`mlpipe score --job {spec.name}`), then use --new-only"
            )
        self.as_of, day_run, self.day_table, model_id, challenger_id, mode = live
        if not runs.try_lock(conn, "score", spec.name, self.as_of):
            raise RunLockedError(
                f"{runs.lock_holder(conn, 'score', spec.name, self.as_of)} is already scoring {spec.name} "
                f"for {self.as_of}; wait for it to finish (`mlpipe runs`) and top up again"
            )
        self._drop_dead_topups()
        with conn.transaction():
            publish.ensure_job_tables(conn, spec)
        # The model that scored the day: one day, one model (and the same A/B arm for new entities).
        self.model = registry.get(conn, spec.name, model_id=model_id)
        self._check_model(self.model)
        self.challenger = self._day_challenger(challenger_id, mode)
        validate.warm_up()  # once the models are loaded, as a scoring run does (the narwhals import)
        self.moment = conn.execute("select now()").fetchone()[0]
        check_features_source(conn, spec, self.moment)
        self.spec_digest = spec_digest(spec)
        self.run_id = runs.start(
            conn,
            "topup",
            spec.name,
            self.as_of,
            model_id=self.model.model_id,
            challenger_model_id=self.challenger and self.challenger.model_id,
            challenger_mode=self.challenger and "ab",
            spec_digest=self.spec_digest,
        )
        runs.record_source_as_of(conn, self.run_id, self.moment)
        self.table = publish.create_run_table(conn, spec, self.run_id, self.as_of, self.model.model_version)
        planned = time.monotonic()
        self.keys_table = self._new_keys(day_run)
        keys = sql.SQL("select entity_id as {} from {}").format(
            sql.Identifier(spec.entity.key), sql.Identifier(publish.DATA_SCHEMA, self.keys_table)
        )
        self.population, self.chunks = plan_chunks(conn, spec, self.moment, self.settings.chunk_rows, keys)
        if self.chunks and self.chunks[0].key_lo is None:
            # New keys are few and mostly the newest: a lower bound lets a set-based features SQL
            # (aggregating by key) read only their range, where the key list alone would not reach it.
            lowest = conn.execute(
                sql.SQL("select min(entity_id) from {}").format(
                    sql.Identifier(publish.DATA_SCHEMA, self.keys_table)
                )
            ).fetchone()[0]
            self.chunks[0] = dataclasses.replace(self.chunks[0], key_lo=lowest)
        self.timings["plan_s"] = round(time.monotonic() - planned, 3)
        if self.population == 0:
            self.chunks = []  # nothing to score: finish records that and drops the tables
        plan = [[c.chunk_no, c.key_lo, c.key_hi, c.is_last] for c in self.chunks]
        runs.record_plan(conn, self.run_id, self.population, plan)
        log.info(
            "top-up %s: %s for %s as of %s, %d new entities in %d chunks",
            self.run_id,
            spec.name,
            self.as_of,
            self.moment,
            self.population,
            len(self.chunks),
        )

    def _new_keys(self, day_run: int) -> str:
        """The population as of now, less the day's entities and those its runs quarantined, as a
        table of the run's own (the chunks read only these keys)."""
        name = keys_table_name(self.spec, self.run_id)
        key = sql.Identifier(self.spec.entity.key)
        target = sql.Identifier(publish.DATA_SCHEMA, name)
        self.conn.execute(
            sql.SQL(
                "create table {target} as select distinct population.{key} as entity_id "
                "from ({population}) as population "
                "where population.{key} is not null "
                "and not exists (select from {day} as day where day.entity_id = population.{key}) "
                "and not exists (select from mlpipe.quarantine q join mlpipe.runs r using (run_id) "
                "  where q.entity_id = population.{key}::text and r.job = %(job)s and r.as_of = %(day)s "
                "  and (r.run_id = %(day_run)s or (r.kind = 'topup' and r.status = 'published' "
                "       and r.run_id > %(day_run)s)))"
            ).format(
                target=target,
                key=key,
                population=sql.SQL(self.spec.sql("population")),
                day=sql.Identifier(publish.DATA_SCHEMA, self.day_table),
            ),
            {"as_of": self.moment, "job": self.spec.name, "day": self.as_of, "day_run": day_run},
        )
        self.conn.execute(sql.SQL("alter table {} add primary key (entity_id)").format(target))
        self.conn.execute(sql.SQL("analyze {}").format(target))
        return name

    def _day_challenger(self, challenger_id: int | None, mode: str | None) -> ModelVersion | None:
        """The day's A/B challenger, when the day had one and the job still asks for a share."""
        if challenger_id is None or "ab" not in (mode or "") or self.spec.outputs.challenger_share == 0:
            return None
        challenger = registry.get(self.conn, self.spec.name, model_id=challenger_id)
        self._check_model(challenger)
        return challenger

    def _drop_dead_topups(self) -> None:
        """Top-ups of this day still marked running died (we hold the lock): drop their tables."""
        for dead in runs.crashed(self.conn, "topup", self.spec.name, self.as_of):
            runs.abandon(self.conn, dead.run_id)
            publish.drop_run_table(self.conn, publish.run_table_name(self.spec, dead.run_id))
            publish.drop_run_table(self.conn, keys_table_name(self.spec, dead.run_id))
            log.warning("top-up %s of %s for %s had died; its tables were dropped", dead.run_id, *self._day)

    @property
    def _day(self) -> tuple[str, date]:
        return self.spec.name, self.as_of

    @property
    def context(self) -> RunContext:
        """The chunks read features as of the top-up's moment, for its new keys only."""
        return dataclasses.replace(super().context, as_of=self.moment, keys_table=self.keys_table)

    def _finish(self, results: list[ChunkResult]) -> RunSummary:
        if runs.status(self.conn, self.run_id) == "published":  # a retry after the insert committed
            return self._record(results, *self._tally(results)[:2], [], {}, False)
        scored, quarantined, histogram, inputs = self._tally(results)
        if self.population == 0:
            self.timings["rows_inserted"] = 0
            self._nothing_to_do()
            return self._record(results, 0, 0, histogram, inputs, False)
        self._gate(results, histogram, inputs, whole_day=False)
        inserting = time.monotonic()
        self.timings["rows_inserted"] = publish.insert_into_day(
            self.conn,
            self.spec,
            self.as_of,
            self.run_id,
            self.table,
            lock_timeout_ms=self.settings.lock_timeout_ms,
            attempts=self.settings.publish_retries,
            drop=(self.keys_table,),
        )
        self.timings["insert_s"] = round(time.monotonic() - inserting, 4)
        return self._record(results, scored, quarantined, histogram, inputs, False)

    def _nothing_to_do(self) -> None:
        runs.succeed(self.conn, self.run_id, self.model.model_id, {"rows_inserted": 0})
        for table in (self.table, self.keys_table):
            publish.drop_run_table(self.conn, table)
        log.info("top-up %s: %s for %s has every entity already", self.run_id, *self._day)

    def _fail(self, exc: BaseException) -> None:
        """Mark the top-up failed and drop its tables (its keys too)."""
        if self.keys_table is not None and not (self.conn.closed or self.conn.broken):
            try:
                publish.drop_run_table(self.conn, self.keys_table)
            except psycopg.OperationalError as db_down:  # the next top-up drops it with the dead run
                log.warning("could not drop %s: %s", self.keys_table, db_down)
        super()._fail(exc)
