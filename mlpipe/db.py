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
    return _ready_url(settings) or _embedded_server(settings).get_uri()


def _ready_url(settings: Settings) -> str | None:
    """The running embedded server's URL, as pgserver gives it, read from its postmaster.pid; None
    unless it runs and is ready. pgserver takes a machine-wide lock on every call and again at exit,
    held for seconds while any other process on the machine starts a server: a running one needs
    neither."""
    try:
        lines = (settings.pgdata / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, status = int(lines[0]), lines[4].strip(), lines[7].strip()
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return f"postgresql://postgres:@/postgres?host={socket_dir}" if status == "ready" and socket_dir else None


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


def conninfo_of(conn: psycopg.Connection) -> str:
    """The connection string an open connection was made with, password included (info.dsn leaves it
    out): for another connection like it, never for a log line."""
    options = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val}
    return psycopg.conninfo.make_conninfo(**options)


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
    """Apply every migration not yet recorded, in order, each in its own transaction (an
    administrator's step: it creates schemas and roles). Nothing pending means no DDL at all."""
    with connection(url, autocommit=True) as conn:
        recorded = _recorded(conn)
        if recorded is not None and not _pending(recorded):
            _warn_changed(recorded)
            return []
        conn.execute("select pg_advisory_lock(%s)", [_MIGRATION_LOCK_KEY])
        try:
            return _apply_pending(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"cannot apply migrations as {conn.info.user}: {str(exc).splitlines()[0]}; "
                "run `mlpipe db migrate` with an administrator's MLPIPE_DATABASE_URL"
            ) from None
        finally:
            conn.execute("select pg_advisory_unlock(%s)", [_MIGRATION_LOCK_KEY])


def _apply_pending(conn: psycopg.Connection) -> list[str]:
    applied: list[str] = []
    conn.execute("create schema if not exists mlpipe")
    conn.execute(
        """create table if not exists mlpipe.migrations (
               version text primary key,
               sha256 text not null,
               applied_at timestamptz not null default now())"""
    )
    done = {row[0]: row[1] for row in conn.execute("select version, sha256 from mlpipe.migrations")}
    _warn_changed(done)
    for path in migration_files():
        if path.stem in done:
            continue
        text = path.read_text()
        with conn.transaction():
            conn.execute(sql.SQL(text))  # trusted file shipped with mlpipe
            conn.execute(
                "insert into mlpipe.migrations (version, sha256) values (%s, %s)",
                [path.stem, _sha256(path)],
            )
        applied.append(path.stem)
        log.info("applied migration %s", path.name)
    return applied


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_text().encode()).hexdigest()


def _warn_changed(recorded: dict[str, str]) -> None:
    for path in migration_files():
        if path.stem in recorded and recorded[path.stem] != _sha256(path):
            log.warning("migration %s changed since it was applied; not re-applied", path.name)


def _pending(recorded: dict[str, str]) -> list[str]:
    return [p.stem for p in migration_files() if p.stem not in recorded]


def _recorded(conn: psycopg.Connection) -> dict[str, str] | None:
    """version -> sha256 of the applied migrations; empty before the first one; None when this role
    may not read mlpipe.migrations (a reader), so nothing can be said about the schema."""
    # Through the catalogs, which every role can read: naming mlpipe.migrations in a query would
    # fail with "permission denied for schema" for a reader.
    row = conn.execute(
        """select has_schema_privilege(n.oid, 'usage') and has_table_privilege(c.oid, 'select'),
                  c.oid is not null
           from pg_namespace n left join pg_class c on c.relnamespace = n.oid and c.relname = 'migrations'
           where n.nspname = 'mlpipe'"""
    ).fetchone()
    if row is None or not row[1]:
        return {}
    if not row[0]:
        return None
    return {r[0]: r[1] for r in conn.execute("select version, sha256 from mlpipe.migrations")}


def require_migrated(url: str) -> None:
    """Refuse in one line when the database's schema is not the one this mlpipe's migrations make."""
    with connection(url, autocommit=True) as conn:
        recorded = _recorded(conn)
    if recorded is None:  # a role that cannot read mlpipe: its own queries will say what it may not do
        return
    known = [p.stem for p in migration_files()]
    unknown = sorted(set(recorded) - set(known))
    if unknown:
        raise DatabaseError(
            f"database schema has migrations this mlpipe does not know ({', '.join(unknown)}): "
            "upgrade mlpipe to the version that applied them"
        )
    pending = _pending(recorded)
    if pending:
        raise DatabaseError(
            f"database schema is at migration {len(known) - len(pending)} of {len(known)}; "
            "run `mlpipe db migrate` as an administrator"
        )


def migration_status(url: str) -> tuple[list[str], list[str]]:
    """(applied, pending) migration names (all pending when this role cannot read mlpipe)."""
    with connection(url, autocommit=True) as conn:
        recorded = _recorded(conn) or {}
    names = [p.stem for p in migration_files()]
    return [n for n in names if n in recorded], [n for n in names if n not in recorded]
