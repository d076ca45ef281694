"""The monitoring report opened in a real headless Chromium, driven through the DevTools protocol: no
console error, no request but the file itself, every expected chart drawn; a screenshot is saved beside
the report for people to look at. An empty job gives a valid report of empty-state sentences."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from websockets.sync.client import connect

from flows.train import train_flow
from mlpipe import monitor, registry, report
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, score

pytestmark = [pytest.mark.integration]
CHURN = Path(__file__).parents[2] / "jobs" / "churn"
CHART_SVG = "figure.chart > svg"
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source", "embed"}


class _Browser:
    """One headless Chromium page over the DevTools protocol, recording console errors and requests."""

    def __init__(self, ws_url: str) -> None:
        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.events: list[str] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == self.next_id:
                assert "error" not in message, (method, message["error"])
                return message["result"]
            self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method", ""), message.get("params", {})
        self.events.append(method)
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(json.dumps(params["args"])[:300])
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])

    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + 60
        while "Page.loadEventFired" not in self.events:
            assert time.monotonic() < deadline, "the page never finished loading"
            self._event(json.loads(self.ws.recv(timeout=60)))

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"][
            "value"
        ]

    def screenshot(self, path: Path, width: int = 1400) -> None:
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
def chromium() -> Iterator[str]:
    """A fresh headless Chromium with a DevTools port (nothing replayed from another test's page); the
    DevTools websocket URL of its first page."""
    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is not installed: .ci/run installs it (apt-get install -y chromium)"
    profile = Path(tempfile.mkdtemp(prefix="mlpipe-chromium-"))
    log = (profile / "stderr.log").open("w")  # a file, not a pipe: nothing blocks if nobody reads it
    process = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile / 'user'}",
            "--no-first-run",
            "--window-size=1400,3000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        port, deadline = None, time.monotonic() + 60
        while port is None and time.monotonic() < deadline and process.poll() is None:
            # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            found = re.search(
                r"DevTools listening on ws://[^:]+:(\d+)/", (profile / "stderr.log").read_text()
            )
            port = found and found.group(1)
            time.sleep(0.1)
        assert port, f"chromium did not open its DevTools port: {(profile / 'stderr.log').read_text()[-500:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _open(chromium: str, path: Path) -> _Browser:
    browser = _Browser(chromium)
    browser.open(path.resolve().as_uri())
    assert browser.errors == [], browser.errors
    assert browser.requests == [path.resolve().as_uri()], "the report must load nothing but itself"
    browser.screenshot(path.with_suffix(".png"))
    return browser


class _Tags(HTMLParser):
    """Whether every element the report opens is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.bad.append(tag)


def _well_formed(document: str) -> bool:
    parser = _Tags()
    parser.feed(document)
    return not parser.bad and not parser.stack


def _job_with_shadow_and_tight_drift(tmp_path: Path) -> str:
    """churn with the challenger scoring in shadow, and drift thresholds low enough that sampling noise
    in a 3000-customer world flags some inputs (so the flagged distributions are drawn)."""
    folder = tmp_path / "churn"
    shutil.copytree(CHURN, folder)
    spec = yaml.safe_load((folder / "job.yaml").read_text())
    spec["outputs"]["shadow"] = True
    spec["monitoring"] = {"drift": {"warn": 0.003, "fail": 0.008}}
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(folder / "job.yaml")


@pytest.mark.usefixtures("prefect_api")
def test_report_opens_offline_in_chromium_with_every_chart(conn, tmp_path, chromium):
    challenger = train_flow(job="churn", as_of=days_ago(7))["model_version"]
    registry.set_alias(
        conn, "churn", "challenger", registry.get(conn, "churn", model_version=challenger).model_id, "test"
    )
    job = _job_with_shadow_and_tight_drift(tmp_path)
    for day in (days_ago(45), days_ago(40), days_ago(2), days_ago(1)):
        score(job, day)
    spec = load_job(job, Settings())
    monitor.monitor(conn, spec, date.today())

    out = report.write_report(conn, spec, tmp_path / "out" / "report.html", days=60)

    flagged = conn.execute(
        """select count(*) from mlpipe.drift where job = 'churn' and level <> 'ok'
             and as_of = (select max(as_of) from mlpipe.drift where job = 'churn')"""
    ).fetchone()[0]
    assert flagged > 0, "the tight thresholds must flag some inputs"
    # run health 2, score 1, flagged inputs, performance 1, calibration 1, arms 1, timeline 1
    expected = 7 + min(flagged, report.MAX_DISTRIBUTIONS)
    document = out.read_text()
    assert _well_formed(document) and out.stat().st_size < 5_000_000
    assert not re.search(r"<script|<link|@import|@font-face|https?://(?!www\.w3\.org)", document)
    browser = _open(chromium, out)
    assert browser.evaluate(f"document.querySelectorAll('{CHART_SVG}').length") == expected
    drawn = (
        f"[...document.querySelectorAll('{CHART_SVG}')].filter(s => s.getBoundingClientRect().height > 50"
        " && s.querySelectorAll('path, rect, text').length > 10).length"
    )
    assert browser.evaluate(drawn) == expected, "every chart draws marks"
    text = browser.evaluate("document.body.innerText")
    assert "Only the champion" not in text and "No matured day" not in text
    assert challenger in text and "shadow" in text
    print(f"report: {out} ({out.stat().st_size} bytes), screenshot: {out.with_suffix('.png')}")


def test_empty_job_gives_a_valid_report_of_empty_states(conn, tmp_path, chromium):
    spec = load_job("churn", Settings()).model_copy(update={"name": "nothing_yet"})

    out = report.write_report(conn, spec, tmp_path / "empty.html")

    document = out.read_text()
    assert _well_formed(document)
    for sentence in (
        "No published day for nothing_yet",
        "No scoring run of nothing_yet",
        "No published day of nothing_yet yet",
        "No performance recorded for nothing_yet",
        "No matured day with outcomes yet",
        "Only the champion scored",
        "No model trained, alias changed or day served",
    ):
        assert sentence in document, sentence
    browser = _open(chromium, out)
    assert browser.evaluate(f"document.querySelectorAll('{CHART_SVG}').length") == 0
