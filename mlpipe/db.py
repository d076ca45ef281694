"""Connections, the embedded PostgreSQL, and migrations."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from mlpipe.errors import MlpipeError
from mlpipe.resources import resource_dir
from mlpipe.settings import Settings

log = logging.getLogger(__name__)

# A fixed key for the migration lock; two processes starting at once must not apply twice.
_MIGRATION_LOCK_KEY = 0x6D6C7069


class DatabaseError(MlpipeError):
    """The database could not be reached or prepared."""


def database_url(settings: Settings, *, start: bool = True) -> str:
    """The URL to use: MLPIPE_DATABASE_URL if set, else the embedded server (started on demand)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    if not start and not embedded_running(settings):
        raise DatabaseError("the embedded database is not running: start it with `mlpipe db up`")
    return _embedded_server(settings).get_uri()


def _embedded_server(settings: Settings):  # -> pgserver.PostgresServer
    # Imported lazily: pgserver touches the filesystem on import and is not needed with a URL.
    # It warns about XDG_RUNTIME_DIR on machines without a login session; its fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    settings.pgdata.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None keeps the server running after this process exits, so that
    # `psql "$(mlpipe db url)"` and later commands find it; `mlpipe db down` stops it.
    return pgserver.get_server(settings.pgdata, cleanup_mode=None)


def embedded_running(settings: Settings) -> bool:
    """Whether the embedded server's postmaster is alive."""
    pid_file = settings.pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False
    return True


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    if not embedded_running(settings):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=settings.pgdata, user=user)
    except subprocess.CalledProcessError as exc:
        raise DatabaseError(f"could not stop the embedded server in {settings.pgdata}: {exc}") from exc
    return True


def connect(url: str, *, autocommit: bool = False, application_name: str = "mlpipe") -> psycopg.Connection:
    """Open a connection; errors name the host but never the password."""
    try:
        # Dates become timestamps at midnight UTC whatever the server default, so as_of means one instant.
        return psycopg.connect(
            url, autocommit=autocommit, application_name=application_name, options="-c timezone=UTC"
        )
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL ({_redact(url)}): {exc}".strip()) from exc


@contextmanager
def connection(url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A connection closed on exit (committed on success when not autocommit)."""
    conn = connect(url, autocommit=autocommit)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def _redact(url: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


def migration_files() -> list[Path]:
    """Migrations in apply order: files named NNN_name.sql in the sql/ folder."""
    files = sorted(resource_dir("sql").glob("[0-9][0-9][0-9]_*.sql"))
    if not files:
        raise DatabaseError("no migrations found; is the package installed completely?")
    return files


def migrate(url: str) -> list[str]:
    """Apply every migration not yet recorded, in order, each in its own transaction."""
    applied: list[str] = []
    with connection(url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", [_MIGRATION_LOCK_KEY])
        try:
            conn.execute("create schema if not exists mlpipe")
            conn.execute(
                """create table if not exists mlpipe.migrations (
                       version text primary key,
                       sha256 text not null,
                       applied_at timestamptz not null default now())"""
            )
            done = {row[0]: row[1] for row in conn.execute("select version, sha256 from mlpipe.migrations")}
            for path in migration_files():
                text = path.read_text()
                digest = hashlib.sha256(text.encode()).hexdigest()
                if path.stem in done:
                    if done[path.stem] != digest:
                        log.warning("migration %s changed since it was applied; not re-applied", path.name)
                    continue
                with conn.transaction():
                    conn.execute(sql.SQL(text))  # trusted file shipped with mlpipe
                    conn.execute(
                        "insert into mlpipe.migrations (version, sha256) values (%s, %s)",
                        [path.stem, digest],
                    )
                applied.append(path.stem)
                log.info("applied migration %s", path.name)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", [_MIGRATION_LOCK_KEY])
    return applied


def migration_status(url: str) -> tuple[list[str], list[str]]:
    """(applied, pending) migration names."""
    with connection(url, autocommit=True) as conn:
        exists = conn.execute("select to_regclass('mlpipe.migrations') is not null").fetchone()[0]
        done = set()
        if exists:
            done = {r[0] for r in conn.execute("select version from mlpipe.migrations")}
    names = [p.stem for p in migration_files()]
    return [n for n in names if n in done], [n for n in names if n not in done]
