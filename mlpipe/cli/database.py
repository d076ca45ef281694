"""`mlpipe db`: start, stop, migrate and locate the database."""

from __future__ import annotations

import typer

from mlpipe import db
from mlpipe.cli.common import console
from mlpipe.errors import UsageError
from mlpipe.settings import Settings

db_app = typer.Typer(help="The database: start, stop, migrate, show its URL.", no_args_is_help=True)


@db_app.command("up")
def db_up() -> None:
    """Start the embedded database and apply migrations; with MLPIPE_DATABASE_URL, check its schema."""
    settings = Settings()
    url = db.database_url(settings)
    if settings.database_url is not None:
        db.require_migrated(url)  # migrating a given server is `mlpipe db migrate`, as its administrator
        console.print("database ready (MLPIPE_DATABASE_URL); schema current")
        return
    applied = db.migrate(url)
    console.print(
        f"database ready (embedded, in {settings.pgdata}); "
        f"migrations applied now: {', '.join(applied) or 'none'}"
    )


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
    """Apply pending migrations (with a given MLPIPE_DATABASE_URL: an administrator's URL)."""
    applied = db.migrate(db.database_url(Settings()))
    console.print(f"applied: {', '.join(applied) or 'nothing pending'}")
