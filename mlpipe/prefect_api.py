"""A temporary Prefect API for the CLI's flows that never outlives the mlpipe process that started it.

Without PREFECT_API_URL, Prefect starts its own temporary API (`SubprocessASGIServer`) as a plain child
process that only an `atexit` hook stops: a SIGKILLed `mlpipe score` leaves it running. The CLI starts
the same server app itself instead (`prefect.server.api.server:create_app`, as Prefect runs it), with a
pipe on its stdin whose only writer is the mlpipe process. The kernel closes that pipe however mlpipe
ends (SIGKILL included), and the server stops when it reads the end of it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlpipe.errors import MlpipeError

# Exit code of uvicorn when its port was taken between choosing it and binding it: try another port.
PORT_TAKEN = 3
ATTEMPTS = 3
GRACE_SECONDS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    from prefect.settings import get_current_settings

    # What Prefect gives its own temporary server: no UI, ephemeral mode, this process's settings.
    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def _stop(process: subprocess.Popen) -> None:
    """Close the pipe (the server shuts down on its own), then make sure it is gone."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until_up(process: subprocess.Popen, url: str, timeout: float) -> bool:
    """True once the API answers; False if the port was taken; raises if the server cannot start."""
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            code = process.poll()
            if code == PORT_TAKEN:
                return False
            if code is not None:
                raise MlpipeError(f"the temporary Prefect API exited with code {code} while starting")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise MlpipeError(
        f"the temporary Prefect API did not answer within {timeout:.0f}s: raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL to a running server"
    )


def _start() -> tuple[subprocess.Popen, str]:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    for _ in range(ATTEMPTS):
        port = _free_port()
        command = [sys.executable, "-m", "mlpipe.prefect_api", str(port)]
        # Its own session: a Ctrl-C at the terminal reaches mlpipe only, which still needs the API to
        # record how its run ended; the server stops after mlpipe, when the pipe closes.
        process = subprocess.Popen(command, stdin=subprocess.PIPE, env=_server_env(), start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            if _wait_until_up(process, url, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
                return process, url
        except BaseException:
            _stop(process)
            raise
        _stop(process)
    raise MlpipeError(f"no free port for the temporary Prefect API after {ATTEMPTS} attempts")


@contextmanager
def prefect_api() -> Iterator[None]:
    """Run the block's flows against PREFECT_API_URL if set, else against a temporary API tied to us."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    process, url = _start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield
            finally:
                _flush_to_api()
    finally:
        _stop(process)


def _flush_to_api() -> None:
    """Send Prefect's queued logs and events (a crash report among them) while the API is still up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=GRACE_SECONDS)


def _stop_when_parent_ends() -> None:
    sys.stdin.buffer.read()  # returns at end of file: mlpipe closed the pipe, or mlpipe is gone
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
    time.sleep(GRACE_SECONDS)
    os._exit(1)  # shutdown hung (an open connection): go anyway, nobody is left to serve


def serve(port: int) -> None:
    """The server process: Prefect's API app on loopback until the pipe from mlpipe closes."""
    import uvicorn

    threading.Thread(target=_stop_when_parent_ends, daemon=True).start()
    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    serve(int(sys.argv[1]))
