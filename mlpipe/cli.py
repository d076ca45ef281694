"""The `mlpipe` command line: one command per operation, clear errors, progress on long work."""

from __future__ import annotations

import logging
import os
import sys
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlpipe import db, registry
from mlpipe.errors import MlpipeError, UsageError
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job

app = typer.Typer(
    help="Precompute predictions for a whole population and publish them into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: start, stop, migrate, show its URL.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
err = Console(stderr=True)

JobOption = Annotated[
    str, typer.Option("--job", "-j", help="Job spec: a name (jobs/NAME/job.yaml) or a path.")
]
AsOfOption = Annotated[str | None, typer.Option("--as-of", help="Day, YYYY-MM-DD (default: today).")]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model version, e.g. churn-v3 (default: champion).")
]


def _day(value: str | None, option: str = "--as-of") -> date:
    if value is None:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a date: use YYYY-MM-DD, e.g. {date.today()}") from None


def _prepare(job: str | None = None) -> tuple[Settings, str, JobSpec | None]:
    """Settings, a migrated database URL, and the job spec if one is named."""
    settings = Settings()
    spec = load_job(job, settings) if job else None
    url = db.database_url(settings)
    db.migrate(url)
    return settings, url, spec


def _quiet_prefect() -> None:
    # Operators read rich output; Prefect's own logs stay available with MLPIPE_VERBOSE=1.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("MLPIPE_VERBOSE"):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    """Console entry point: known errors become one red line and exit code 1, no traceback."""
    logging.basicConfig(
        level=logging.INFO if os.environ.get("MLPIPE_VERBOSE") else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_prefect()
    try:
        app()
    except MlpipeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)


@app.command()
def demo(
    entities: Annotated[int, typer.Option(min=100, help="Customers in the demo world.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the demo world.")] = 42,
) -> None:
    """Set up everything on the embedded database: demo data, train, score today, publish, look up."""
    from psycopg import sql

    from flows.score import with_workers
    from flows.train import train_flow
    from mlpipe.demo import titanic, world

    settings, url, spec = _prepare("churn")
    with console.status(f"generating a demo world of {entities:,} customers"), db.connection(url) as conn:
        summary = world.generate(conn, entities, seed=seed)
        titanic.load(conn)
    console.print(
        f"demo world: {summary.entities:,} customers, {summary.events:,} events, "
        f"{summary.payments:,} payments, {summary.cancellations:,} cancellations"
    )
    with console.status("training (monthly job)"):
        trained = train_flow(job="churn")
    _print_training(trained)
    with console.status("scoring today's population (daily job)"):
        result = with_workers(settings)(job="churn", as_of=date.today())
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
        lookup(str(sample[0]), job="churn", as_of=None)
        console.print("\nA frontend reads it with plain SQL, no model involved:")
        console.print(f'  psql "$(mlpipe db url)" -c "{reader_sql}"', highlight=False, soft_wrap=True)


@app.command()
def train(job: JobOption = "churn", as_of: AsOfOption = None) -> None:
    """Train the job's candidates as of a day, register the best, promote it if the rule is met."""
    from flows.train import train_flow

    day = _day(as_of)
    _, _, spec = _prepare(job)
    with console.status(f"training {spec.name} as of {day}"):
        result = train_flow(job=str(spec.folder / "job.yaml"), as_of=day)
    _print_training(result)


@app.command()
def score(job: JobOption = "churn", as_of: AsOfOption = None, model: ModelOption = None) -> None:
    """Score the whole population as of a day and publish it atomically."""
    from flows.score import with_workers

    day = _day(as_of)
    settings, _, spec = _prepare(job)
    spec.check_as_of(day)
    with console.status(f"scoring {spec.name} as of {day}"):
        result = with_workers(settings)(job=str(spec.folder / "job.yaml"), as_of=day, model_version=model)
    _print_score(result)


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD (inclusive).")],
    job: JobOption = "churn",
    model: ModelOption = None,
) -> None:
    """Score every day of a range as of that day; the latest view never moves backwards."""
    from flows.score import with_workers
    from mlpipe.score import days_between

    days = days_between(_day(start, "--start"), _day(end, "--end"))
    settings, _, spec = _prepare(job)
    flow = with_workers(settings)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"backfill {spec.name}", total=len(days))
        for day in days:
            progress.update(bar, description=f"backfill {spec.name} {day}")
            result = flow(job=str(spec.folder / "job.yaml"), as_of=day, model_version=model)
            progress.console.print(
                f"{day}: {result['rows_scored']:,} scored, "
                f"{result['rows_quarantined']:,} quarantined (run {result['run_id']})"
            )
            progress.advance(bar)


@app.command()
def lookup(
    entity_id: Annotated[str, typer.Argument(help="The entity's key.")],
    job: JobOption = "churn",
    as_of: Annotated[str | None, typer.Option("--as-of", help="Read that day from history instead.")] = None,
) -> None:
    """Show an entity's published prediction, exactly as a frontend reads it."""
    from psycopg import sql

    _, url, spec = _prepare(job)
    key: int | str = entity_id
    if spec.entity.type == "bigint":
        try:
            key = int(entity_id)
        except ValueError:
            raise UsageError(f"job {spec.name} has bigint keys; {entity_id!r} is not an integer") from None
    table = spec.name if as_of is None else f"{spec.name}_history"
    query = sql.SQL("select * from {} where entity_id = %s").format(sql.Identifier("predictions", table))
    params: list = [key]
    if as_of is not None:
        query = sql.SQL("{} and as_of = %s").format(query)
        params.append(_day(as_of))
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
    out = Table(title=f"predictions.{table}", show_header=False)
    for name, value in zip(names, row, strict=True):
        out.add_row(name, str(value))
    console.print(out)


@app.command()
def runs(
    job: Annotated[str | None, typer.Option("--job", "-j", help="Only this job.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Recent training and scoring runs with their counts, model and outcome."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        rows = conn.execute(
            """select r.run_id, r.job, r.kind, r.as_of, r.status, m.model_version, r.population,
                      r.rows_scored, r.rows_quarantined,
                      extract(epoch from r.finished_at - r.started_at), r.error
               from mlpipe.runs r left join mlpipe.models m using (model_id)
               where %(job)s::text is null or r.job = %(job)s
               order by r.run_id desc limit %(limit)s""",
            {"job": spec.name if spec else None, "limit": limit},
        ).fetchall()
    out = Table("run", "job", "kind", "as of", "status", "model", "population", "scored", "quarantined")
    out.add_column("seconds")
    out.add_column("error")
    for row in rows:
        out.add_row(str(row[0]), *(_cell(value) for value in row[1:-1]), (row[-1] or "")[:80])
    console.print(out)


@app.command()
def models(job: JobOption = "churn") -> None:
    """Registered model versions of a job with their test metrics and aliases."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        rows = registry.list_models(conn, spec.name)
    out = Table(
        "version", "algorithm", "aliases", "trained as of", spec.model.metric, "brier", "decision", "created"
    )
    for r in rows:
        test = r["test_metrics"] or {}
        out.add_row(
            r["model_version"],
            r["algorithm"],
            r["aliases"],
            str(r["trained_as_of"]),
            f"{test.get(spec.model.metric, float('nan')):.4f}",
            f"{test.get('brier', float('nan')):.4f}",
            r["decision"] or "",
            f"{r['created_at']:%Y-%m-%d %H:%M}",
        )
    console.print(out)


@db_app.command("up")
def db_up() -> None:
    """Start the embedded database (when no MLPIPE_DATABASE_URL is set) and apply migrations."""
    settings = Settings()
    applied = db.migrate(db.database_url(settings))
    where = "MLPIPE_DATABASE_URL" if settings.database_url else f"embedded, in {settings.pgdata}"
    console.print(f"database ready ({where}); migrations applied now: {', '.join(applied) or 'none'}")


@db_app.command("down")
def db_down() -> None:
    """Stop the embedded database (data stays in MLPIPE_HOME)."""
    settings = Settings()
    if settings.database_url is not None:
        raise UsageError("MLPIPE_DATABASE_URL is set: that server is not mlpipe's to stop")
    stopped = db.stop_embedded(settings)
    console.print("embedded database stopped" if stopped else "embedded database was not running")


@db_app.command("status")
def db_status() -> None:
    """Whether the database is reachable and which migrations are applied or pending."""
    settings = Settings()
    if settings.database_url is None and not db.embedded_running(settings):
        console.print(f"embedded database in {settings.pgdata}: [yellow]not running[/] (`mlpipe db up`)")
        raise typer.Exit(3)
    url = db.database_url(settings, start=False)
    applied, pending = db.migration_status(url)
    with db.connection(url, autocommit=True) as conn:
        version = conn.execute("show server_version").fetchone()[0]
    console.print(
        f"PostgreSQL {version}: [green]up[/]; migrations applied {len(applied)}, pending "
        f"{len(pending)}{': ' + ', '.join(pending) if pending else ''}"
    )


@db_app.command("url")
def db_url() -> None:
    """Print the database URL (starting the embedded database if needed), for psql and frontends."""
    print(db.database_url(Settings()))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations."""
    applied = db.migrate(db.database_url(Settings()))
    console.print(f"applied: {', '.join(applied) or 'nothing pending'}")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) or type(value).__name__ == "Decimal":
        return f"{float(value):,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _print_training(result: dict) -> None:
    test, base = result["test"], result["baseline"]
    out = Table(
        "",
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        title=f"{result['model_version']} on the out-of-time test set",
    )
    out.add_row(
        "model",
        f"{test['roc_auc']:.4f}",
        f"{test['pr_auc']:.4f}",
        f"{test['log_loss']:.4f}",
        f"{test['brier']:.4f}",
    )
    out.add_row("baseline rule", f"{base['roc_auc']:.4f}", f"{base['pr_auc']:.4f}", "", "")
    console.print(out)
    verdict = "[green]promoted to champion[/]" if result["promoted"] else "[yellow]kept as challenger[/]"
    console.print(f"{result['model_version']}: {verdict} ({'; '.join(result['decision']['reasons'])})")


def _print_score(result: dict) -> None:
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


if __name__ == "__main__":
    main()
