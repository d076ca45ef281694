"""What the benchmarks share: a scratch home folder and a database to fill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path


def scratch() -> tuple[Path, str]:
    """(a fresh home folder, a migrated database's URL): MLPIPE_DATABASE_URL if set (its demo schema
    will be replaced), else an embedded PostgreSQL in the home folder, deleted when the benchmark exits."""
    home = Path(tempfile.mkdtemp(prefix="mlpipe-bench-"))
    url = os.environ.get("MLPIPE_DATABASE_URL")
    if not url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
        url = pgserver.get_server(home / "pgdata", cleanup_mode="delete").get_uri()
    from mlpipe.db import migrate

    migrate(url)
    return home, url


def run_json(script: str, args: list[str], env: dict, what: str) -> dict:
    """Run `script` with `args` in a fresh Python process (its own peak RSS); its last line is JSON."""
    out = subprocess.run(
        [sys.executable, script, *args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stdout}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_env(url: str, home: Path) -> dict:
    """The environment a bench's worker processes run in: the scratch database and home, Prefect quiet."""
    return {
        **os.environ,
        "MLPIPE_DATABASE_URL": url,
        "MLPIPE_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
