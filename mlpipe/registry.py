"""The model registry in PostgreSQL: versions, the champion alias and its history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mlpipe.errors import ModelNotFoundError, NoChampionError, UsageError
from mlpipe.spec import JobSpec

if TYPE_CHECKING:  # the ML libraries load only with a model (the CLI's quick commands never do)
    from mlpipe.algorithms import ScoringModel


@dataclass(frozen=True)
class ModelVersion:
    """A registered model; `load()` verifies the artifact before returning a scoring model."""

    model_id: int
    job: str
    version: int
    model_version: str
    algorithm: str
    trained_as_of: date
    artifact_uri: str
    artifact_sha256: str
    metrics: dict
    feature_schema: dict
    reference: dict
    library_versions: dict
    training_window: dict
    calibration: dict | None = None

    def verify(self) -> None:
        """Refuse an artifact that is missing or changed since training, without loading it."""
        from mlpipe import artifacts

        artifacts.verified_bytes(self.artifact_uri, self.artifact_sha256)

    def load(self) -> ScoringModel:
        from mlpipe import artifacts

        return artifacts.load(
            self.artifact_uri,
            self.artifact_sha256,
            self.algorithm,
            self.feature_schema["columns"],
            self.library_versions,
            self.calibration,
        )


_SELECT_MODEL = """
    select model_id, job, version, model_version, algorithm, trained_as_of, artifact_uri, artifact_sha256,
           metrics, feature_schema, reference, library_versions, training_window, calibration
    from mlpipe.models
    where model_id = %(model_id)s or (job = %(job)s and model_version = %(model_version)s)
"""


def next_version(conn: psycopg.Connection, job: str) -> int:
    """The next version number of a job (serialized by a transaction-level lock on the job)."""
    conn.execute("select pg_advisory_xact_lock(hashtextextended('mlpipe.models:' || %s, 0))", [job])
    row = conn.execute(
        "select coalesce(max(version), 0) + 1 from mlpipe.models where job = %s", [job]
    ).fetchone()
    return row[0]


def register(conn: psycopg.Connection, spec: JobSpec, version: int, record: dict[str, Any]) -> ModelVersion:
    """Insert a model version; `record` holds the registry columns (see sql/002_registry.sql)."""
    jsonb = {k: Jsonb(v) if isinstance(v, dict | list) else v for k, v in record.items()}
    row = conn.execute(
        """insert into mlpipe.models (job, version, model_version, algorithm, trained_as_of, artifact_uri,
               artifact_sha256, metrics, params, feature_schema, training_window, row_counts, reference,
               library_versions, code_version, promotion, calibration, behaviour)
           values (%(job)s, %(version)s, %(model_version)s, %(algorithm)s, %(trained_as_of)s,
               %(artifact_uri)s, %(artifact_sha256)s, %(metrics)s, %(params)s, %(feature_schema)s,
               %(training_window)s,
               %(row_counts)s, %(reference)s, %(library_versions)s, %(code_version)s, %(promotion)s,
               %(calibration)s, %(behaviour)s)
           returning model_id""",
        {"job": spec.name, "version": version, "model_version": f"{spec.name}-v{version}", **jsonb},
    ).fetchone()
    return get(conn, spec.name, model_id=row[0])


def get(
    conn: psycopg.Connection, job: str, *, model_id: int | None = None, model_version: str | None = None
) -> ModelVersion:
    """A model by id or by version name ("churn-v3" or "3")."""
    if model_id is None and model_version is not None and "-v" not in str(model_version):
        model_version = f"{job}-v{model_version}"
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SELECT_MODEL, {"model_id": model_id, "job": job, "model_version": model_version})
        row = cur.fetchone()
    if row is None:
        raise ModelNotFoundError(
            f"job {job} has no model {model_version or model_id}; list them with `mlpipe models --job {job}`"
        )
    return ModelVersion(**row)


def aliased(conn: psycopg.Connection, job: str, alias: str) -> ModelVersion | None:
    """The model an alias ("champion", "challenger") points at, or None."""
    row = conn.execute(
        "select model_id from mlpipe.model_aliases where job = %s and alias = %s", [job, alias]
    ).fetchone()
    return get(conn, job, model_id=row[0]) if row else None


def champion(conn: psycopg.Connection, job: str) -> ModelVersion | None:
    """The current champion, or None."""
    return aliased(conn, job, "champion")


def challenger(conn: psycopg.Connection, job: str) -> ModelVersion | None:
    """The current challenger, or None."""
    return aliased(conn, job, "challenger")


def resolve(conn: psycopg.Connection, job: str, model_version: str | None) -> ModelVersion:
    """The model to score with: the one named, else the champion."""
    if model_version:
        return get(conn, job, model_version=model_version)
    model = champion(conn, job)
    if model is None:
        raise NoChampionError(f"job {job} has no champion model yet: run `mlpipe train --job {job}` first")
    return model


def set_alias(
    conn: psycopg.Connection,
    job: str,
    alias: str,
    model_id: int,
    reason: str,
    changed_by: str | None = None,
    *,
    share: float | None = None,
) -> None:
    """Point an alias at a model and keep the change (who, when, why, and a rollout's share of
    entities) in mlpipe.alias_history."""
    previous = conn.execute(
        "select model_id from mlpipe.model_aliases where job = %s and alias = %s for update", [job, alias]
    ).fetchone()
    conn.execute(
        """insert into mlpipe.model_aliases (job, alias, model_id) values (%s, %s, %s)
           on conflict (job, alias) do update set model_id = excluded.model_id, updated_at = now()""",
        [job, alias, model_id],
    )
    _history(conn, job, alias, model_id, previous and previous[0], reason, changed_by, share)


def clear_alias(
    conn: psycopg.Connection,
    job: str,
    alias: str,
    reason: str,
    changed_by: str,
    *,
    share: float | None = None,
) -> None:
    """Remove an alias (a challenger rolled back), keeping the change in mlpipe.alias_history."""
    previous = conn.execute(
        "delete from mlpipe.model_aliases where job = %s and alias = %s returning model_id", [job, alias]
    ).fetchone()
    _history(conn, job, alias, None, previous and previous[0], reason, changed_by, share)


def _history(conn, job, alias, model_id, previous_id, reason, changed_by, share) -> None:
    conn.execute(
        """insert into mlpipe.alias_history (job, alias, model_id, previous_model_id, reason, changed_by,
               share)
           values (%s, %s, %s, %s, %s, coalesce(%s, current_user), %s)""",
        [job, alias, model_id, previous_id, reason, changed_by, share],
    )


def list_models(conn: psycopg.Connection, job: str) -> list[dict]:
    """Every version of a job, newest first, with its aliases and test metrics."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """select m.model_version, m.algorithm, m.created_at, m.trained_as_of,
                      m.metrics -> 'test' as test_metrics, m.promotion ->> 'decision' as decision,
                      coalesce(string_agg(a.alias, ',' order by a.alias), '') as aliases
               from mlpipe.models m
               left join mlpipe.model_aliases a on a.model_id = m.model_id
               where m.job = %s
               group by m.model_id
               order by m.version desc""",
            [job],
        )
        return cur.fetchall()


def promote(
    conn: psycopg.Connection,
    job: str,
    model: ModelVersion,
    reason: str,
    changed_by: str,
    *,
    share: float | None = None,
) -> ModelVersion | None:
    """Make `model` the champion (by hand, or at the end of a rollout); returns the one it replaced."""
    previous = champion(conn, job)
    if previous is not None and previous.model_id == model.model_id:
        raise UsageError(f"{model.model_version} is already the champion of {job}")
    set_alias(conn, job, "champion", model.model_id, reason, changed_by, share=share)
    conn.execute(
        "delete from mlpipe.model_aliases where job = %s and alias = 'challenger' and model_id = %s",
        [job, model.model_id],
    )
    return previous


def rollback(
    conn: psycopg.Connection, job: str, reason: str, changed_by: str
) -> tuple[ModelVersion, ModelVersion]:
    """Restore the champion that the current one replaced; returns (demoted, restored)."""
    row = conn.execute(
        """select model_id, previous_model_id from mlpipe.alias_history
           where job = %s and alias = 'champion' order by change_id desc limit 1""",
        [job],
    ).fetchone()
    if row is None or row[1] is None:
        raise UsageError(f"job {job} has no earlier champion to roll back to (see `mlpipe models show`)")
    demoted, restored = get(conn, job, model_id=row[0]), get(conn, job, model_id=row[1])
    set_alias(conn, job, "champion", restored.model_id, f"rollback: {reason}", changed_by)
    return demoted, restored


def alias_history(conn: psycopg.Connection, job: str, limit: int = 20) -> list[dict]:
    """Alias changes of a job, newest first: who, when, why."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """select h.changed_at, h.alias, m.model_version, p.model_version as previous,
                      h.share, h.changed_by, h.reason
               from mlpipe.alias_history h
               left join mlpipe.models m on m.model_id = h.model_id
               left join mlpipe.models p on p.model_id = h.previous_model_id
               where h.job = %s order by h.change_id desc limit %s""",
            [job, limit],
        )
        return cur.fetchall()


def published_runs(conn: psycopg.Connection, model_id: int) -> list[dict]:
    """The days a model version published (as champion, challenger share or shadow)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """select p.as_of, p.kind, r.run_id, r.rows_scored,
                      case when r.model_id = %(id)s then 'champion' else r.challenger_mode end as role
               from mlpipe.partitions p join mlpipe.runs r using (run_id)
               where r.model_id = %(id)s or r.challenger_model_id = %(id)s
               order by p.as_of desc, p.kind""",
            {"id": model_id},
        )
        return cur.fetchall()


def details(conn: psycopg.Connection, job: str, model_version: str) -> dict:
    """Everything the registry knows about one version (for `mlpipe models show`)."""
    model = get(conn, job, model_version=model_version)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """select m.*, coalesce((select string_agg(alias, ',') from mlpipe.model_aliases a
                                     where a.model_id = m.model_id), '') as aliases
               from mlpipe.models m where model_id = %s""",
            [model.model_id],
        )
        row = cur.fetchone()
    row.pop("reference", None)  # 1001 quantiles and histograms: in the table, too long to show
    row["published"] = published_runs(conn, model.model_id)
    return row
