"""Monitoring flow: drift and performance brought up to date for a job, judged, shown on the run."""

from __future__ import annotations

import time
from datetime import date

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from mlpipe import flow_runs, metrics, monitor, report, rollout
from mlpipe.db import connection, database_url
from mlpipe.settings import Settings
from mlpipe.spec import load_job


@task(name="monitor")
def monitor_task(job: str, as_of: date) -> dict:
    """Record the job's drift and performance as of a day; artifacts on the run; alert on `fail`."""
    settings = Settings()
    spec = load_job(job, settings)
    started = time.monotonic()
    try:
        with connection(database_url(settings), autocommit=True) as conn:
            result = monitor.monitor(conn, spec, as_of)
            flow_runs.record_flow_run(conn, result.run_id)
            step = rollout.advance(conn, spec, as_of)  # a running rollout: advanced, promoted, rolled back
            report_path = report.write_report(conn, spec, report.default_path(settings, spec), as_of=as_of)
    except BaseException:
        metrics.record_failure(settings, spec.name, "monitor")
        raise
    metrics.record_monitor(
        settings, spec.name, result.figures, bool(result.failed), seconds=time.monotonic() - started
    )
    summary = {**result.as_dict(), "report": str(report_path), "rollout": step and step.as_dict()}
    create_table_artifact(
        table=[{"figure": name, "value": value} for name, value in result.figures.items()],
        key=f"{spec.name.replace('_', '-')}-monitor",
        description=f"{spec.name} as of {as_of}: key figures of the monitor",
    )
    findings = "\n".join(f"- **{f.level}**: {f}" for f in result.findings) or "- nothing crossed a threshold"
    create_markdown_artifact(
        markdown=f"## {spec.name} as of {as_of}\n\n{findings}\n\n"
        f"The report with charts (one file, opens offline): `{report_path}`.\n\n"
        "Analysts: query `mlpipe.performance` and `mlpipe.drift`.",
        key=f"{spec.name.replace('_', '-')}-findings",
    )
    monitor.raise_on_failure(result)
    return summary


@flow(name="mlpipe-monitor", flow_run_name=flow_runs.monitor_run_name)
def monitor_flow(job: str = "churn", as_of: date | None = None) -> dict:
    """Monitor the job as of `as_of` (default today); a crossed `fail` threshold fails the run."""
    flow_runs.tag_run("monitor", job)
    with flow_runs.run_logs("monitor", job):
        return monitor_task(job, as_of or date.today())
