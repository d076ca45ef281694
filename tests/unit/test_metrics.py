"""Prometheus metrics of score and monitor runs: the textfile parses with prometheus_client's own parser
and holds each job's newest figures; pushes reach a real HTTP server on loopback; failures only warn."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlpipe import metrics
from mlpipe.settings import Settings

SUMMARY = {
    "run_id": 7,
    "job": "churn",
    "as_of": "2026-11-20",
    "model_version": "v1",
    "population": 1010,
    "rows_scored": 1000,
    "rows_quarantined": 10,
    "chunks": 1,
    "view_moved": True,
    "timings": {"plan_s": 0.5, "chunks_s": 3.25, "gate_s": 0.2, "publish_s": 0.01, "total_s": 4.5},
}
FIGURES = {
    "job": "churn",
    "as_of": "2026-11-21",
    "day": "2026-11-20",
    "score_psi_training": 0.04,
    "score_psi_previous": None,
    "worst_feature": "sessions_30d",
    "worst_feature_psi": 0.31,
    "worst_feature_level": "fail",
    "realized_day": "2026-10-20",
    "realized_roc_auc": 0.81,
    "estimated_roc_auc": 0.79,
}


def _samples(text: str) -> dict[tuple, float]:
    """(name, sorted label items) -> value, through prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_file_holds_every_job_and_kind_and_parses(tmp_path):
    path = tmp_path / "textfile" / "mlpipe.prom"
    settings = Settings(metrics_file=path)

    metrics.record_score(settings, SUMMARY)
    metrics.record_score(settings, {**SUMMARY, "job": "wide", "rows_scored": 5, "timings": {}})
    metrics.record_monitor(settings, "churn", FIGURES, failed=False, seconds=1.5)

    got = _samples(path.read_text())
    churn_score = {"mlpipe_job": "churn", "kind": "score"}
    churn_monitor = {"mlpipe_job": "churn", "kind": "monitor"}
    assert _value(got, "mlpipe_rows_scored", **churn_score) == 1000
    assert _value(got, "mlpipe_rows_quarantined", **churn_score) == 10
    assert _value(got, "mlpipe_rows_scored", mlpipe_job="wide", kind="score") == 5
    assert _value(got, "mlpipe_stage_duration_seconds", stage="chunks", **churn_score) == 3.25
    assert _value(got, "mlpipe_stage_duration_seconds", stage="total", **churn_score) == 4.5
    assert (
        _value(got, "mlpipe_day_timestamp_seconds", **churn_score)
        == datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    )
    assert _value(got, "mlpipe_feature_psi_max", feature="sessions_30d", **churn_monitor) == 0.31
    assert _value(got, "mlpipe_score_psi", reference="training", **churn_monitor) == 0.04
    assert _value(got, "mlpipe_realized_roc_auc", **churn_monitor) == 0.81
    assert _value(got, "mlpipe_monitor_failed", **churn_monitor) == 0
    assert _value(got, "mlpipe_stage_duration_seconds", stage="total", **churn_monitor) == 1.5
    success = _value(got, "mlpipe_last_success_timestamp_seconds", **churn_monitor)
    assert abs(success - datetime.now(UTC).timestamp()) < 60
    # Only known figures: no index stage was timed, no PSI against the previous day was given.
    assert (
        "mlpipe_stage_duration_seconds",
        tuple(sorted({"stage": "index", **churn_score}.items())),
    ) not in got
    assert not any(name == "mlpipe_score_psi" and ("reference", "previous") in lbl for name, lbl in got)
    assert not any(
        name == "mlpipe_stage_duration_seconds" and ("mlpipe_job", "wide") in lbl for name, lbl in got
    )


def test_a_run_replaces_its_own_lines_and_a_failed_monitor_keeps_the_last_success(tmp_path):
    path = tmp_path / "mlpipe.prom"
    settings = Settings(metrics_file=path)
    metrics.record_monitor(settings, "churn", FIGURES, failed=False)
    before = _samples(path.read_text())
    monitor = {"mlpipe_job": "churn", "kind": "monitor"}

    drifted = {**FIGURES, "worst_feature": "tenure_days", "worst_feature_psi": 0.5, "realized_roc_auc": None}
    metrics.record_monitor(settings, "churn", drifted, failed=True)

    after = _samples(path.read_text())
    assert _value(after, "mlpipe_monitor_failed", **monitor) == 1
    assert _value(after, "mlpipe_feature_psi_max", feature="tenure_days", **monitor) == 0.5
    assert (
        "mlpipe_feature_psi_max",
        tuple(sorted({"feature": "sessions_30d", **monitor}.items())),
    ) not in after
    last_success = ("mlpipe_last_success_timestamp_seconds", tuple(sorted(monitor.items())))
    assert after[last_success] == before[last_success], "a failed run must not erase the last success"
    assert _value(after, "mlpipe_realized_roc_auc", **monitor) == 0.81, "an unsent figure stays as it was"

    metrics.record_monitor(settings, "churn", drifted, failed=False)
    again = _samples(path.read_text())
    assert again[last_success] > before[last_success]
    assert not any(name == "mlpipe_realized_roc_auc" for name, _ in again), "a success replaces the group"


def test_a_failed_scoring_run_keeps_the_last_successful_figures(tmp_path):
    path = tmp_path / "mlpipe.prom"
    settings = Settings(metrics_file=path)
    metrics.record_score(settings, SUMMARY)
    before = _samples(path.read_text())

    metrics.record_failure(settings, "churn", "score")

    after = _samples(path.read_text())
    score = {"mlpipe_job": "churn", "kind": "score"}
    assert _value(after, "mlpipe_rows_scored", **score) == 1000
    success = _value(after, "mlpipe_last_success_timestamp_seconds", **score)
    assert success == _value(before, "mlpipe_last_success_timestamp_seconds", **score)
    assert _value(after, "mlpipe_last_failure_timestamp_seconds", **score) >= success
    assert _value(after, "mlpipe_last_run_timestamp_seconds", **score) >= success


def test_an_unreadable_metrics_file_is_written_anew(tmp_path, caplog):
    path = tmp_path / "mlpipe.prom"
    path.write_text("this is { not the text format\n")
    with caplog.at_level(logging.WARNING, logger="mlpipe.metrics"):
        metrics.record_score(Settings(metrics_file=path), SUMMARY)
    assert "could not be read" in caplog.text
    assert _value(_samples(path.read_text()), "mlpipe_rows_scored", mlpipe_job="churn", kind="score") == 1000


@pytest.fixture
def gateway() -> Iterator[tuple[str, list]]:
    """A stand-in Pushgateway on 127.0.0.1 that records (method, path, body) and answers 200."""
    received: list[tuple[str, str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = _record

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_score_and_monitor_push_to_their_own_groups(gateway):
    url, received = gateway
    settings = Settings(pushgateway_url=url)

    metrics.record_score(settings, SUMMARY)
    metrics.record_monitor(settings, "churn", FIGURES, failed=False)
    metrics.record_monitor(settings, "churn", FIGURES, failed=True)

    assert [(method, path) for method, path, _ in received] == [
        ("PUT", "/metrics/job/mlpipe/kind/score/mlpipe_job/churn"),
        ("PUT", "/metrics/job/mlpipe/kind/monitor/mlpipe_job/churn"),
        ("POST", "/metrics/job/mlpipe/kind/monitor/mlpipe_job/churn"),
    ]
    score = _samples(received[0][2])
    assert _value(score, "mlpipe_rows_scored") == 1000
    assert _value(score, "mlpipe_stage_duration_seconds", stage="publish") == 0.01
    # The gateway adds job and the grouping key; a pushed label of the same name would be rejected.
    assert all(not {"job", "mlpipe_job", "kind"} & {k for k, _ in labels} for _, labels in score)
    failed = _samples(received[2][2])
    assert _value(failed, "mlpipe_monitor_failed") == 1
    assert not any(name == "mlpipe_last_success_timestamp_seconds" for name, _ in failed)


def test_an_unreachable_gateway_logs_one_warning_and_the_run_goes_on(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mlpipe.metrics"):
        # Port 1 on loopback: nothing listens, the connection is refused at once.
        metrics.record_score(
            Settings(pushgateway_url="http://ops:s3cret@127.0.0.1:1", metrics_file=tmp_path / "m.prom"),
            SUMMARY,
        )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "push to http://127.0.0.1:1 failed" in warnings[0].getMessage()
    assert "s3cret" not in caplog.text, "a password in the gateway's URL is never logged"
    assert (tmp_path / "m.prom").is_file(), "the file is still written"
