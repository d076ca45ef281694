"""The `mlpipe` command line: one command per operation, clear errors, progress on long work."""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
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
models_app = typer.Typer(help="The model registry: list, show, promote, rollback, diff.")
app.add_typer(models_app, name="models")
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


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, job: JobOption = "churn", as_json: JsonOption = False) -> None:
    """Registered model versions of a job (list when no subcommand is given)."""
    if ctx.invoked_subcommand is None:
        models_list(job=job, as_json=as_json)


@models_app.command("list")
def models_list(job: JobOption = "churn", as_json: JsonOption = False) -> None:
    """Versions with their test metrics, aliases and promotion decision."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        rows = registry.list_models(conn, spec.name)
    if as_json:
        _print_json(rows)
        return
    metric = spec.model.metric
    out = Table("version", "algorithm", "aliases", "trained as of", metric, "brier", "decision", "created")
    for r in rows:
        test = r["test_metrics"] or {}
        out.add_row(
            r["model_version"],
            r["algorithm"],
            r["aliases"],
            str(r["trained_as_of"]),
            f"{test.get(metric, float('nan')):.4f}",
            f"{test.get('brier', float('nan')):.4f}",
            r["decision"] or "",
            f"{r['created_at']:%Y-%m-%d %H:%M}",
        )
    console.print(out)


@models_app.command("show")
def models_show(version: VersionArgument, job: JobOption = "churn", as_json: JsonOption = False) -> None:
    """One version: lineage, metrics, calibration, behaviour, alias history and the days it published."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        info = registry.details(conn, spec.name, version)
        history = registry.alias_history(conn, spec.name)
    if as_json:
        _print_json({**info, "alias_history": history})
        return
    test = info["metrics"]["test"]
    facts = Table(title=info["model_version"], show_header=False)
    for label, value in (
        ("algorithm", info["algorithm"]),
        ("aliases", info["aliases"] or "-"),
        ("trained as of", info["trained_as_of"]),
        ("training window", json.dumps(info["training_window"])),
        ("row counts", json.dumps(info["row_counts"])),
        ("artifact", f"{info['artifact_uri']} (sha256 {info['artifact_sha256'][:16]}…)"),
        ("libraries", json.dumps(info["library_versions"])),
        ("test", ", ".join(f"{k} {test[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss", "brier"))),
        ("calibration", (info["calibration"] or {}).get("method", "none")),
        (
            "behaviour",
            "; ".join(
                f"{c['check']}: {'ok' if c['passed'] else 'FAILED'}"
                for c in (info["behaviour"] or {}).get("checks", [])
            )
            or "-",
        ),
        ("decision", "; ".join((info["promotion"] or {}).get("reasons", []))),
    ):
        facts.add_row(label, str(value))
    console.print(facts)
    _print_rows("days published", info["published"])
    _print_rows(f"alias history of {spec.name}", history)


@models_app.command("promote")
def models_promote(version: VersionArgument, reason: ReasonOption, job: JobOption = "churn") -> None:
    """Make a version the champion by hand; the next scoring run uses it."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        model = registry.get(conn, spec.name, model_version=version)
        previous = registry.promote(conn, spec.name, model, reason, _operator())
    was = previous.model_version if previous else "none"
    console.print(f"{model.model_version} is now the champion of {spec.name} (was {was})")


@models_app.command("rollback")
def models_rollback(
    reason: ReasonOption,
    job: JobOption = "churn",
    republish: Annotated[
        bool,
        typer.Option(
            help="Point the view back at the newest day the restored "
            "model published, now, without re-scoring."
        ),
    ] = False,
) -> None:
    """Restore the previous champion for the next run (and, with --republish, for readers now)."""
    from mlpipe import publish

    settings, url, spec = _prepare(job)
    with db.connection(url) as conn:
        demoted, restored = registry.rollback(conn, spec.name, reason, _operator())
        conn.commit()
        console.print(f"champion of {spec.name}: {demoted.model_version} -> {restored.model_version}")
        if republish:
            day = publish.republish_latest(
                conn,
                spec,
                restored.model_id,
                f"rollback to {restored.model_version}",
                lock_timeout_ms=settings.lock_timeout_ms,
                attempts=settings.publish_retries,
            )
            console.print(f"predictions.{spec.name} now shows {day}, scored by {restored.model_version}")


@models_app.command("diff")
def models_diff(
    a: VersionArgument, b: VersionArgument, job: JobOption = "churn", as_json: JsonOption = False
) -> None:
    """Two versions side by side: metrics, parameters, features, training window."""
    _, url, spec = _prepare(job)
    with db.connection(url) as conn:
        left, right = registry.details(conn, spec.name, a), registry.details(conn, spec.name, b)
    rows = _diff_rows(left, right)
    if as_json:
        _print_json({"a": left["model_version"], "b": right["model_version"], "differences": rows})
        return
    out = Table("", left["model_version"], right["model_version"], "b - a")
    for name, x, y, delta in rows:
        out.add_row(name, str(x), str(y), "" if delta is None else f"{delta:+.4f}")
    console.print(out)


def _diff_rows(left: dict, right: dict) -> list[tuple]:
    rows = []
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier"):
        x, y = left["metrics"]["test"][metric], right["metrics"]["test"][metric]
        rows.append((f"test {metric}", round(x, 4), round(y, 4), y - x))
    for label, key in (
        ("algorithm", "algorithm"),
        ("trained as of", "trained_as_of"),
        ("calibration", "calibration"),
        ("chosen params", "params"),
    ):
        x, y = left[key], right[key]
        if key == "params":
            x, y = x.get("chosen"), y.get("chosen")
        if key == "calibration":
            x, y = (x or {}).get("method", "none"), (y or {}).get("method", "none")
        rows.append((label, x, y, None))
    lcols, rcols = left["feature_schema"]["columns"], right["feature_schema"]["columns"]
    rows.append(("features only in a", sorted(set(lcols) - set(rcols)) or "-", "", None))
    rows.append(("features only in b", "", sorted(set(rcols) - set(lcols)) or "-", None))
    rows.append(("training rows", left["row_counts"].get("train"), right["row_counts"].get("train"), None))
    return rows


def _operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (mlpipe cli)"


def _print_json(data: object) -> None:
    print(json.dumps(data, default=str, indent=2))


def _print_rows(title: str, rows: list[dict]) -> None:
    if not rows:
        console.print(f"{title}: none")
        return
    out = Table(*rows[0].keys(), title=title)
    for row in rows:
        out.add_row(*(_cell(v) for v in row.values()))
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
        title="out-of-time test set",
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
