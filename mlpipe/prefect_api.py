"""The Prefect API that the CLI's flows, the demo and the deployments run against.

With PREFECT_API_URL set (in the environment or the active Prefect profile), that server or Prefect
Cloud is used as it is. Otherwise mlpipe manages a local Prefect server, as it does the embedded
database: `prefect server start` (the API and the UI) on loopback, run in the foreground of its own
session so that it outlives the command that started it, with its own PREFECT_HOME and SQLite database
under MLPIPE_HOME/prefect, its output in server.log there and its pid and URL in server.json. The first
command that needs it starts it; every later one checks its pid and /api/health and reuses it, or starts
it again if it died; `mlpipe server down` stops it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from mlpipe.errors import MlpipeError
from mlpipe.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 4200  # Prefect's own default: the UI at the address its documentation gives
STARTUP_TIMEOUT_S = 120.0  # the first start (database migrations) takes 15-30 s on two busy cores
STOP_GRACE_S = 15.0
GRACE_SECONDS = 10
PORT_ATTEMPTS = 3

# Servers this process started: kept referenced so that Python does not warn that they still run.
_started: list[subprocess.Popen] = []


@dataclass(frozen=True)
class ManagedServer:
    """The managed server as recorded in server.json: its process, port and API URL."""

    pid: int
    port: int
    url: str

    @property
    def ui_url(self) -> str:
        """Where Prefect's UI is (the API URL without /api)."""
        return self.url.removesuffix("/api")


def server_dir(settings: Settings) -> Path:
    """MLPIPE_HOME/prefect: the managed server's PREFECT_HOME, state file and log."""
    return settings.home / "prefect"


def log_path(settings: Settings) -> Path:
    """The managed server's output (Prefect's own log lines)."""
    return server_dir(settings) / "server.log"


def _state_path(settings: Settings) -> Path:
    return server_dir(settings) / "server.json"


def recorded(settings: Settings) -> ManagedServer | None:
    """The server that server.json records (it may have died since), or None."""
    try:
        return ManagedServer(**json.loads(_state_path(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    """The process runs and is a Prefect server (not a zombie, nor a new process that got its pid)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and "prefect" in process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def healthy(url: str, timeout: float = 2.0) -> bool:
    """The API at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running(settings: Settings) -> ManagedServer | None:
    """The managed server if its process lives and its API answers, else None."""
    server = recorded(settings)
    if server is not None and _alive(server.pid) and healthy(server.url):
        return server
    return None


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One command at a time starts or stops the server (two would race for the port and state)."""
    folder = server_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_server(settings: Settings) -> ManagedServer:
    """The managed server, started if it is not running (or restarted if it died or hangs)."""
    with _locked(settings):
        server = recorded(settings)
        if server is not None and _alive(server.pid):
            if healthy(server.url):
                return server
            log.warning("the managed Prefect server (pid %s) does not answer; restarting it", server.pid)
            _terminate(server.pid)
        elif server is not None:
            log.warning("the managed Prefect server (pid %s) had stopped; starting it again", server.pid)
        return _start(settings, server.port if server else DEFAULT_PORT)


def stop_server(settings: Settings) -> ManagedServer | None:
    """Stop the managed server if it runs; returns what was stopped."""
    with _locked(settings):
        server = recorded(settings)
        _state_path(settings).unlink(missing_ok=True)
        if server is None or not _alive(server.pid):
            return None
        _terminate(server.pid)
        return server


def _terminate(pid: int) -> None:
    """SIGTERM the server's process group (uvicorn shuts down gracefully), SIGKILL if it hangs."""
    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=STOP_GRACE_S)
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def _port_free(port: int) -> bool:
    """Nothing listens on the port (connections of a killed server in TIME_WAIT do not count: the
    server binds with SO_REUSEADDR, as here)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _choose_port(preferred: int) -> int:
    """The port it had (so the UI's address stays the same), else any free one."""
    if preferred and _port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL" and not k.startswith("PREFECT__")}
    env["PREFECT_HOME"] = str(server_dir(settings))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")  # no access log line per request
    if "PREFECT_UI_ENABLED" not in env:
        env.setdefault("PREFECT_SERVER_UI_ENABLED", "true")
    return env


def _start(settings: Settings, preferred_port: int) -> ManagedServer:
    """Start the server and wait for its health check; another port if its port got taken meanwhile."""
    port = _choose_port(preferred_port)
    for _ in range(PORT_ATTEMPTS):
        process, server = _spawn(settings, port)
        if _wait_until_up(process, server, settings):
            log.info("started the managed Prefect server at %s (pid %s)", server.url, server.pid)
            return server
        port = _choose_port(0)
    raise MlpipeError(
        f"no free port for the managed Prefect server after {PORT_ATTEMPTS} attempts; "
        "set PREFECT_API_URL to a running Prefect server"
    )


def _spawn(settings: Settings, port: int) -> tuple[subprocess.Popen, ManagedServer]:
    url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path(settings), "ab") as output:
        output.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} mlpipe starts {url}\n".encode())
        output.flush()
        # Its own session: it outlives this command, and a Ctrl-C at the terminal does not reach it.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=server_dir(settings),
            env=_server_env(settings),
            start_new_session=True,
        )
    _started.append(process)
    server = ManagedServer(process.pid, port, url)
    _state_path(settings).write_text(json.dumps(asdict(server)))
    return process, server


def _wait_until_up(process: subprocess.Popen, server: ManagedServer, settings: Settings) -> bool:
    """True once the API answers; False if the port was taken by then; raises if it cannot start."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None and not _port_free(server.port):
            return False  # another program bound the port between our check and the server's
        if code is not None:
            last = _last_line(settings)
            raise MlpipeError(
                f"the managed Prefect server exited with code {code} while starting ({last}); "
                f"see {log_path(settings)}, or set PREFECT_API_URL to a running Prefect server"
            )
        if healthy(server.url, timeout=1.0):
            return True
        time.sleep(0.2)
    _terminate(process.pid)
    raise MlpipeError(
        f"the managed Prefect server did not answer at {server.url} within {STARTUP_TIMEOUT_S:.0f}s; "
        f"see {log_path(settings)}, or set PREFECT_API_URL to a running Prefect server"
    )


def _last_line(settings: Settings) -> str:
    lines = [line for line in log_path(settings).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def configured_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def api_url(settings: Settings | None = None) -> str:
    """The API flows should use: PREFECT_API_URL if set, else the managed server (started if needed)."""
    return configured_url() or ensure_server(settings or Settings()).url


@contextmanager
def prefect_api(settings: Settings | None = None) -> Iterator[None]:
    """Run the block's flows against PREFECT_API_URL if set, else against the managed server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = configured_url()
    url = configured or ensure_server(settings or Settings()).url
    with temporary_settings(updates={PREFECT_API_URL: url}):
        try:
            yield
        finally:
            _flush_to_api()


def _flush_to_api() -> None:
    """Send Prefect's queued logs and events (a crash report among them) before the command ends."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=GRACE_SECONDS)


def run_url(flow_run_id: str | None, settings: Settings | None = None) -> str | None:
    """The UI page of a flow run, without importing Prefect: PREFECT_UI_URL, else derived from
    PREFECT_API_URL (local or Prefect Cloud; Prefect's settings if it is imported), else the managed
    server's address; None if unknown."""
    if not flow_run_id:
        return None
    ui = os.environ.get("PREFECT_UI_URL") or _ui_from_api(os.environ.get("PREFECT_API_URL"))
    if ui is None and "prefect.settings" in sys.modules:  # already paid for: its settings and profile
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

        ui = PREFECT_UI_URL.value() or _ui_from_api(PREFECT_API_URL.value())
    if ui is None:
        server = recorded(settings or Settings())
        ui = server.ui_url if server else None
    return None if ui is None else f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _ui_from_api(api: str | None) -> str | None:
    if not api:
        return None
    api = api.rstrip("/")
    if api.startswith("https://api.prefect.cloud/api/accounts/"):  # Cloud: .../accounts/A/workspaces/W
        account, workspace = api.split("/accounts/")[1].split("/workspaces/")
        return f"https://app.prefect.cloud/account/{account}/workspace/{workspace}"
    return api.removesuffix("/api")
