"""What the command modules share: consoles, options, settings and database preparation, output."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mlpipe import db
from mlpipe.errors import UsageError
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, job_folders, load_job

# Piped output is never cut: a file or a pipe gets each line at its full width (a terminal wraps
# what is wider than itself). Progress goes to stderr, so stdout stays the command's answer.
_WIDE = 100_000
console = Console(width=None if sys.stdout.isatty() else _WIDE)
err = Console(stderr=True, width=None if sys.stderr.isatty() else _WIDE, soft_wrap=True)
progress = Console(stderr=True)


def complete_job(incomplete: str) -> list[str]:
    """Shell completion of --job: the names of the jobs found (MLPIPE_JOBS_PATH, ./jobs, bundled)."""
    return [name for name in job_paths(Settings()) if name.startswith(incomplete)]


def job_paths(settings: Settings) -> dict[str, Path]:
    """Every job name found, with its job.yaml; the first folder that has a name wins (as --job NAME)."""
    found: dict[str, Path] = {}
    for folder in job_folders(settings):
        for spec in sorted(folder.glob("*/job.yaml")) if folder.is_dir() else []:
            found.setdefault(spec.parent.name, spec)
    return found


@contextmanager
def status(text: str) -> Iterator[None]:
    """A spinner on stderr while long work runs (nothing with --quiet or when stderr is not a terminal)."""
    if progress.quiet or not progress.is_terminal:
        yield
        return
    with progress.status(text):
        yield


JobOption = Annotated[
    str,
    typer.Option(
        "--job",
        "-j",
        help="Job: a name (MLPIPE_JOBS_PATH/NAME, ./jobs/NAME, then the bundled jobs) or a path.",
        autocompletion=complete_job,
    ),
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
    if settings.dask_address:
        require_extra("prefect_dask", "dask", f"MLPIPE_DASK_ADDRESS={settings.dask_address}")
    spec = load_job(job, settings) if job else None
    url = db.database_url(settings)
    if settings.database_url is None:
        db.migrate(url)  # the embedded server is mlpipe's own (it connects as its superuser)
    else:
        # A given server's schema is its administrator's (`mlpipe db migrate`): the pipeline's role
        # (mlpipe_writer) may not create schemas or roles, so it only checks.
        db.require_migrated(url)
    return settings, url, spec


def require_extra(module: str, extra: str, needed_for: str) -> None:
    """Refuse in one line when an optional path's package is missing, naming the extra to install."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{needed_for} needs the `{extra}` extra: pip install 'mlpipe[{extra}]'")


def job_of_version(version: str) -> str | None:
    """The job a version name names (`credit-v1` -> credit); None for a bare number (`3`)."""
    match = re.fullmatch(r"([a-z][a-z0-9_]*)-v\d+", version)
    return match.group(1) if match else None


def given(ctx: typer.Context) -> list[str]:
    """Options the operator typed (command line or environment) on this command or group."""
    # By name: typer may carry its own copy of click's ParameterSource enum.
    typed = {"COMMANDLINE", "ENVIRONMENT"}
    return [
        p.opts[0]
        for p in ctx.command.params
        if getattr(ctx.get_parameter_source(p.name), "name", None) in typed
    ]


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
