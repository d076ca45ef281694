"""Small helpers shared by the integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta

import psycopg
from psycopg import sql

from flows.score import score_flow

TODAY = date.today()


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def score(job: str, day: date, model_version: str | None = None) -> dict:
    """Run the real Prefect scoring flow with the settings from the environment."""
    return score_flow(job=job, as_of=day, model_version=model_version)


def published(conn: psycopg.Connection, job: str = "churn") -> dict:
    """entity_id -> (score, decision, percentile, model_version, as_of, run_id) from the view."""
    rows = conn.execute(
        sql.SQL("select entity_id, score, decision, percentile, model_version, as_of, run_id from {}").format(
            sql.Identifier("predictions", job)
        )
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def history_days(conn: psycopg.Connection, job: str = "churn") -> dict[date, int]:
    """Rows per day in the job's history table."""
    rows = conn.execute(
        sql.SQL("select as_of, count(*) from {} group by as_of order by as_of").format(
            sql.Identifier("predictions", f"{job}_history")
        )
    ).fetchall()
    return dict(rows)


def population(conn: psycopg.Connection, day: date) -> int:
    """Active demo customers at the start of `day` (an independent count, not the job's SQL)."""
    return conn.execute(
        """select count(*) from demo.customers c
           where c.signup_at < %(day)s::timestamptz and not exists (
               select from demo.cancellations x where x.customer_id = c.customer_id
                   and x.canceled_at < %(day)s::timestamptz)""",
        {"day": day},
    ).fetchone()[0]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `mlpipe` command in a subprocess, as an operator runs it (this checkout's code)."""
    return subprocess.run(
        [sys.executable, "-m", "mlpipe.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )
