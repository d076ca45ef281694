"""What makes a flow run readable in Prefect's UI: its name, tags, mlpipe's own log lines, artifacts.

The flows call these; each reads the current run from Prefect's context, so the same run looks the
same whether the CLI, a served deployment, the demo or the backfill flow started it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from prefect.artifacts import create_table_artifact
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run, task_run

from mlpipe import runs

if TYPE_CHECKING:  # annotations only: importing the scoring code here would load it for every flow
    from mlpipe.chunks import ChunkResult
    from mlpipe.extract import Chunk

log = logging.getLogger(__name__)

# Set on a record that is for the run's log only: the command prints the error its own way.
API_ONLY = "mlpipe_api_only"


def job_label(job: str) -> str:
    """A job's name from the flow's `job` parameter: a name as it is, a path by its spec's folder."""
    path = Path(str(job))
    if path.suffix in (".yaml", ".yml"):
        return path.parent.name if path.stem == "job" else path.stem
    return path.name


def _day(value: object) -> str:
    return str(value or date.today())


def _named(kind: str) -> str:
    params = flow_run.parameters
    return f"{kind} {job_label(params['job'])} {_day(params.get('as_of'))}"


def score_run_name() -> str:
    """`score churn 2026-11-23`."""
    return _named("score")


def train_run_name() -> str:
    """`train churn 2026-11-01`."""
    return _named("train")


def monitor_run_name() -> str:
    """`monitor churn 2026-11-23`."""
    return _named("monitor")


def backfill_run_name() -> str:
    """`backfill churn 2026-10-01..2026-10-30`."""
    params = flow_run.parameters
    return f"backfill {job_label(params['job'])} {params['start']}..{params['end']}"


def chunk_label(chunk: Chunk) -> str:
    """A chunk by its half-open key range: `chunk 2 [1001, 2001)`; min and max where unbounded."""
    low = "min" if chunk.key_lo is None else chunk.key_lo
    high = "max]" if chunk.key_hi is None else f"{chunk.key_hi})"
    return f"chunk {chunk.chunk_no} [{low}, {high}"


def chunk_run_name() -> str:
    """A chunk task run named by its key range."""
    return chunk_label(task_run.parameters["chunk"])


def tag_run(kind: str, job: str) -> None:
    """Tag the current flow run with mlpipe, its kind and its job (kept with the tags it has)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    tags = sorted({*context.flow_run.tags, "mlpipe", kind, job_label(job)})
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, tags=tags)


def flow_run_id() -> str | None:
    """The current Prefect flow run's id (None outside a flow run)."""
    return flow_run.id


def record_flow_run(conn: psycopg.Connection, run_id: int) -> None:
    """Keep the current Prefect flow run's id on mlpipe's run, so `mlpipe runs show` can link it."""
    runs.record_flow_run(conn, run_id, flow_run.id)


class _ToParents(logging.Handler):
    """Hands a record to the handlers above the `mlpipe` logger at the level they had before."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, API_ONLY, False):
            logging.getLogger().handle(record)


@contextmanager
def run_logs(kind: str, job: str) -> Iterator[None]:
    """mlpipe's INFO lines go to the flow run's log for the block (the console keeps its own level);
    an error that ends the block is logged there too, with its message."""
    logger = logging.getLogger("mlpipe")
    if any(isinstance(h, APILogHandler) for h in logger.handlers):  # a subflow: the parent's handler
        yield  # sends each record to the run it belongs to
        return
    level, propagate, quiet_at = logger.level, logger.propagate, logger.getEffectiveLevel()
    to_api = APILogHandler(level=logging.INFO)
    added: list[logging.Handler] = [to_api]
    if quiet_at > logging.INFO:
        added.append(_ToParents(level=quiet_at))
        logger.propagate = False
    for handler in added:
        logger.addHandler(handler)
    logger.setLevel(min(quiet_at, logging.INFO))
    try:
        yield
    except BaseException as exc:
        message = (str(exc).strip().splitlines() or ["interrupted"])[0]
        log.error(
            "%s %s failed: %s: %s", kind, job_label(job), type(exc).__name__, message, extra={API_ONLY: True}
        )
        raise
    finally:
        for handler in added:
            logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _key(job: str, what: str) -> str:
    return f"{job_label(job).lower().replace('_', '-')}-{what}"


def score_report(conn: psycopg.Connection, job: str, run_id: int) -> dict | None:
    """Log the run's gate outcome and put its table on the flow run: counts, timings, gate results and
    quarantine reasons with counts, as recorded in mlpipe.runs (a failed run's too)."""
    row = runs.score_outcome(conn, run_id)
    if row is None:
        return None
    gates = row.pop("gates") or {}
    timings = row.pop("timings") or {}
    reasons = runs.quarantine_reasons(conn, run_id)
    if gates:
        verdict = "passed" if gates.get("passed") else "failed: " + "; ".join(gates.get("failures", []))
        log.info(
            "run %s gates %s (score PSI against the previous day: %s)",
            run_id,
            verdict,
            gates.get("score_psi"),
        )
    table = [{"section": "run", "item": name, "value": _text(value)} for name, value in row.items()]
    table += [{"section": "timings", "item": name, "value": _text(value)} for name, value in timings.items()]
    if gates:
        table.append({"section": "gates", "item": "passed", "value": _text(gates.get("passed"))})
        table.append({"section": "gates", "item": "score_psi", "value": _text(gates.get("score_psi"))})
        table += [{"section": "gates", "item": "failure", "value": f} for f in gates.get("failures", [])]
    table += [{"section": "quarantine", "item": reason, "value": f"{count:,}"} for reason, count in reasons]
    if not reasons:
        table.append({"section": "quarantine", "item": "rows", "value": "0"})
    create_table_artifact(
        table=table,
        key=_key(job, "score"),
        description=f"scoring run {run_id} of {job_label(job)}: counts, timings, gates, quarantine reasons",
    )
    return {"gates": gates, "quarantine": dict(reasons)}


def report_failed_run(url: str, job: str, run_id: int) -> None:
    """The table of a run that failed, if the database can still be read (the error stays the run's)."""
    from mlpipe.db import DatabaseError, connection

    try:
        with connection(url, autocommit=True) as conn:
            score_report(conn, job, run_id)
    except (psycopg.Error, DatabaseError) as exc:  # the database is what failed: its error is raised
        log.warning("no table for failed run %s: %s", run_id, str(exc).strip().splitlines()[0])


def log_chunk(chunk: Chunk, result: ChunkResult) -> None:
    """One line per finished chunk in the run's log."""
    log.info(
        "%s: %s scored, %s quarantined of %s in %.2fs",
        chunk_label(chunk),
        f"{result.rows_scored:,}",
        f"{result.rows_quarantined:,}",
        f"{result.rows_in:,}",
        result.seconds,
    )


def log_published(summary: dict) -> None:
    """The publish line of a scoring run."""
    log.info(
        "run %s published %s as of %s with %s: %s scored, %s quarantined of %s; %s",
        summary["run_id"],
        summary["job"],
        summary["as_of"],
        summary["model_version"],
        f"{summary['rows_scored']:,}",
        f"{summary['rows_quarantined']:,}",
        f"{summary['population']:,}",
        "the view shows this day" if summary["view_moved"] else "a newer day stays in the view",
    )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def candidates_artifact(job: str, summary: dict) -> None:
    """The training decision table on the flow run: every candidate, the new version, the champion
    and the baseline on the same test set."""
    metric = summary["metric"]
    table = []
    for name, c in summary["candidates"].items():
        test = c["test"] or {}
        table.append(
            {
                "model": name + (" (chosen)" if name == summary["chosen"] else ""),
                "algorithm": c["algorithm"],
                f"validation {metric}": _round(c["validation"]),
                **{m: _round(test.get(m)) for m in ("roc_auc", "pr_auc", "log_loss", "brier")},
                "behaviour": "passed" if c["behaviour_passed"] else "failed",
            }
        )
    others = [
        (f"{summary['model_version']} (calibration: {summary['calibration']})", summary["test"]),
        ("current champion", summary["champion"]),
        ("baseline rule", summary["baseline"]),
    ]
    for name, values in others:
        if values:
            metrics = {m: _round(values.get(m)) for m in ("roc_auc", "pr_auc", "log_loss", "brier")}
            table.append(
                {"model": name, "algorithm": "", f"validation {metric}": None, **metrics, "behaviour": ""}
            )
    verdict = "promoted to champion" if summary["promoted"] else "kept as challenger"
    create_table_artifact(
        table=table,
        key=_key(job, "candidates"),
        description=f"{summary['model_version']}: {verdict}; every model on the same test set",
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
