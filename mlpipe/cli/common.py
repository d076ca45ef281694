"""What the command modules share: consoles, options, settings and database preparation, output."""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mlpipe import db
from mlpipe.errors import UsageError
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job

console = Console()
err = Console(stderr=True)

JobOption = Annotated[
    str, typer.Option("--job", "-j", help="Job spec: a name (jobs/NAME/job.yaml) or a path.")
]
AsOfOption = Annotated[str | None, typer.Option("--as-of", help="Day, YYYY-MM-DD (default: today).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
VersionArgument = Annotated[str, typer.Argument(help="Model version, e.g. churn-v3 (or 3).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why: kept in the alias history.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model version, e.g. churn-v3 (default: champion).")
]


def parse_day(value: str | None, option: str = "--as-of") -> date:
    """A YYYY-MM-DD option as a date (today when absent), or a clear error."""
    if value is None:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a date: use YYYY-MM-DD, e.g. {date.today()}") from None


def prepare(job: str | None = None) -> tuple[Settings, str, JobSpec | None]:
    """Settings, the URL of a database whose schema is current, and the job spec if one is named."""
    settings = Settings()
    spec = load_job(job, settings) if job else None
    url = db.database_url(settings)
    if settings.database_url is None:
        db.migrate(url)  # the embedded server is mlpipe's own (it connects as its superuser)
    else:
        # A given server's schema is its administrator's (`mlpipe db migrate`): the pipeline's role
        # (mlpipe_writer) may not create schemas or roles, so it only checks.
        db.require_migrated(url)
    return settings, url, spec


def cell(value: object) -> str:
    """A table cell: blank for None, thousands separators for numbers."""
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__name__ == "Decimal":
        return f"{float(value):,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_json(data: object) -> None:
    """JSON on stdout (dates and decimals as strings), for scripts."""
    print(json.dumps(data, default=str, indent=2))


def print_rows(title: str, rows: list[dict]) -> None:
    """A list of dicts as a table under a title."""
    if not rows:
        console.print(f"{title}: none")
        return
    out = Table(*rows[0].keys(), title=title)
    for row in rows:
        out.add_row(*(cell(v) for v in row.values()))
    console.print(out)
