"""The managed local Prefect server's life cycle, driven through the CLI as an operator does: started
on demand, reused by every command (it outlives them), started again after it died, stopped by
`mlpipe server down`; with PREFECT_API_URL set, nothing is started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from mlpipe import prefect_api as managed
from mlpipe.settings import Settings
from tests.helpers import days_ago, run_cli

pytestmark = [pytest.mark.integration]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An MLPIPE_HOME of its own and no PREFECT_API_URL; its server is stopped at the end."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "client"))  # no user profile naming a server
    monkeypatch.setenv("MLPIPE_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home")
    yield settings
    managed.stop_server(settings)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def _flow_run(server: managed.ManagedServer, flow_run_id) -> dict:
    return json.loads(_get(f"{server.url}/flow_runs/{flow_run_id}")[1])


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while managed._alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.1)


def _score(day) -> None:
    done = run_cli("score", "--job", "churn", "--as-of", day.isoformat())
    assert done.returncode == 0, done.stderr


def test_up_reuse_died_and_restarted_down(db_url, conn, home):
    assert run_cli("server", "status").returncode == 1

    up = run_cli("server", "up")
    assert up.returncode == 0, up.stderr
    server = managed.recorded(home)
    assert f"UI:  {server.ui_url}" in up.stdout and str(managed.log_path(home)) in up.stdout
    assert psutil.Process(server.pid).is_running(), "the server outlives the command that started it"
    assert _get(f"{server.url}/health") == (200, "true")
    status, page = _get(server.ui_url)
    assert status == 200 and "<html" in page, "the UI is served"
    assert (managed.server_dir(home) / "prefect.db").exists(), "its own SQLite under MLPIPE_HOME"

    # reused: a second `up`, `url` and a scoring run all find the same server
    again = run_cli("server", "up")
    assert "already running" in again.stdout and f"pid {server.pid}" in again.stdout
    assert run_cli("server", "url").stdout.strip() == server.url
    _score(days_ago(2))
    assert managed.recorded(home) == server
    flow_run_id = conn.execute("select flow_run_id from mlpipe.runs where kind = 'score'").fetchone()[0]
    assert _flow_run(server, flow_run_id)["name"] == f"score churn {days_ago(2)}"

    # died: the next command that needs it starts it again, on the same port, with the same database
    os.kill(server.pid, signal.SIGKILL)
    _wait_gone(server.pid)
    assert run_cli("server", "status").returncode == 1
    _score(days_ago(1))
    restarted = managed.recorded(home)
    assert restarted.pid != server.pid and restarted.url == server.url
    assert managed.running(home) == restarted
    assert _flow_run(restarted, flow_run_id)["name"] == f"score churn {days_ago(2)}", "runs kept"
    assert managed.log_path(home).read_text().count("mlpipe starts") == 2

    down = run_cli("server", "down")
    assert down.returncode == 0 and f"pid {restarted.pid}" in down.stdout
    _wait_gone(restarted.pid)
    assert run_cli("server", "status").returncode == 1
    assert "was not running" in run_cli("server", "down").stdout


def test_with_prefect_api_url_set_nothing_is_started(db_url, conn, home, prefect_api):
    day = days_ago(1).isoformat()
    done = run_cli("score", "--job", "churn", "--as-of", day, env={"PREFECT_API_URL": prefect_api})
    assert done.returncode == 0, done.stderr
    assert _nothing_started(home)
    shown = run_cli("server", "url", env={"PREFECT_API_URL": prefect_api})
    assert shown.stdout.strip() == prefect_api
    assert _nothing_started(home)


def _nothing_started(settings: Settings) -> bool:
    return managed.recorded(settings) is None and not managed.log_path(settings).exists()


@pytest.mark.parametrize(
    ("signum", "after_s"),
    [(signal.SIGINT, 3), (signal.SIGTERM, 3), (signal.SIGTERM, 0)],
    ids=["ctrl-c", "sigterm", "sigterm-while-registering"],
)
def test_deploy_serves_until_ctrl_c_or_sigterm_then_stops(prefect_api, signum, after_s):
    """deploy.py started with `&` from a script (SIGINT ignored, as such a shell does) still stops
    promptly and cleanly on Ctrl-C or SIGTERM, also when the signal comes before the runner started."""
    serving = subprocess.Popen(
        [sys.executable, "deployments/deploy.py", "--job", "churn"],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert "serving mlpipe-train/churn-monthly" in serving.stdout.readline()
        time.sleep(after_s)  # 3 s: the runner registers and polls; 0: it is still registering
        serving.send_signal(signum)
        output, _ = serving.communicate(timeout=30)
    finally:
        serving.kill()
    assert serving.returncode == 0, output
    assert "stopped serving" in output and "Traceback" not in output, output
