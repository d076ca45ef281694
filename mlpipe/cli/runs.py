"""`mlpipe runs`: recent runs with their counts and outcome, and one run in full (`runs show N`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from mlpipe import db
from mlpipe import runs as run_records
from mlpipe.cli.common import JsonOption, cell, console, given, prepare, print_json, print_rows
from mlpipe.errors import UsageError

runs_app = typer.Typer(help="Recent runs; `runs show N` for one run in full.")

# Big per-input histograms are the monitor's input, not an operator's reading.
_NOT_SHOWN = ("score_histogram", "input_histograms", "plan")


class Status(StrEnum):
    running = "running"
    published = "published"
    succeeded = "succeeded"
    failed = "failed"
    abandoned = "abandoned"


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only this job.")] = None,
    status: Annotated[Status | None, typer.Option("--status", "-s", help="Only runs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Recent training, scoring and monitor runs with their counts, model, outcome and error."""
    if ctx.invoked_subcommand is not None:
        options = [o for o in given(ctx) if o != "--json"]
        if options:
            raise UsageError(
                f"{', '.join(options)} filter the list of runs; `runs {ctx.invoked_subcommand}` takes "
                "a run id: drop them"
            )
        ctx.obj = {"json": as_json}
        return
    _, url, spec = prepare(job)
    with db.connection(url) as conn:
        rows = run_records.recent(conn, spec.name if spec else None, limit, status and status.value)
    if as_json:
        print_json(rows)
        return
    out = Table("run", "job", "kind", "as of", "status", "model", "population", "scored", "quarantined")
    out.add_column("seconds")
    out.add_column("error")  # whole: a terminal wraps it, a pipe gets it on one line
    for row in rows:
        values = list(row.values())
        out.add_row(str(values[0]), *(cell(v) for v in values[1:]))
    console.print(out)


@runs_app.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[int, typer.Argument(help="The run's id (the first column of `mlpipe runs`).")],
    as_json: JsonOption = False,
) -> None:
    """One run in full: plan, chunks, timings, gate results, quarantine reasons with counts, error."""
    as_json = as_json or bool((ctx.obj or {}).get("json"))
    _, url, _ = prepare()
    with db.connection(url) as conn:
        run = run_records.detail(conn, run_id)
    if run is None:
        raise UsageError(f"no run {run_id} in mlpipe.runs: `mlpipe runs` lists the recent ones")
    run["chunk_count"] = len(run.get("plan") or [])
    link = flow_run_link(run.get("flow_run_id"))
    if link:
        run["prefect_url"] = link
    shown = {k: v for k, v in run.items() if k not in _NOT_SHOWN}
    if as_json:
        print_json(shown)
        return
    _print_run(shown)


def _print_run(run: dict) -> None:
    facts = Table(
        title=f"run {run['run_id']}: {run['kind']} {run['job']} as of {run['as_of']}", show_header=False
    )
    gates = run.get("gates") or {}
    for label, value in (
        ("status", run["status"]),
        ("model", run.get("model_version")),
        ("challenger", run.get("challenger_version")),
        ("started", f"{run['started_at']:%Y-%m-%d %H:%M:%S}"),
        ("seconds", run["seconds"]),
        ("plan", f"{cell(run.get('population'))} entities in {run['chunk_count']} chunk(s)"),
        ("scored", run.get("rows_scored")),
        ("quarantined", run.get("rows_quarantined")),
        ("timings", ", ".join(f"{k} {v}" for k, v in (run.get("timings") or {}).items())),
        ("gates", _gates(gates)),
        ("unknown categories", _unknown(gates)),
        ("prefect", run.get("prefect_url")),
        ("host", f"{run.get('host')} pid {run.get('pid')}"),
        ("error", run.get("error")),
    ):
        if value not in (None, ""):
            facts.add_row(label, cell(value))
    console.print(facts)
    print_rows("chunks", run["chunk_results"])
    print_rows("quarantine reasons", run["quarantine_reasons"])


def _gates(gates: dict) -> str:
    if not gates:
        return ""
    if gates.get("passed"):
        return "passed" + (
            f" (score PSI {gates['score_psi']:.3f})" if gates.get("score_psi") is not None else ""
        )
    return "failed: " + "; ".join(gates.get("failures", []))


def _unknown(gates: dict) -> str:
    counts = gates.get("unknown_categories") or {}
    return ", ".join(f"{name} {count:,}" for name, count in counts.items() if count)


def flow_run_link(flow_run_id: object) -> str | None:
    """Where the run's Prefect flow run is in the UI."""
    if not flow_run_id:
        return None
    from mlpipe.prefect_api import run_url

    return run_url(str(flow_run_id))
