"""Prometheus metrics of score and monitor runs, after the Prometheus docs' batch-job conventions.

Each run builds its own CollectorRegistry (nothing global, nothing at import) holding only the figures
it knows, then:
- with MLPIPE_PUSHGATEWAY_URL, pushes it under job="mlpipe" and the grouping key {mlpipe_job, kind}
  (kind: score or monitor), so a job's score and monitor runs keep separate groups. A successful run
  replaces its group (PUT); a failed run (record_failure, or a monitor past a fail threshold) only
  replaces the metrics it sends (POST), so the group keeps the last success's timestamp and figures.
  The pushed metrics carry no label of the grouping key (the Pushgateway adds them) and never `job`,
  which belongs to the gateway;
- with MLPIPE_METRICS_FILE, writes the node-exporter textfile format to that one file, every line
  labelled {mlpipe_job, kind}: the run replaces its own job and kind's lines (with the same rule as the
  push) and keeps every other job's, under a lock beside the file, by an atomic rename.

Metrics are a side channel: a gateway that cannot be reached or a file that cannot be written logs one
warning line and never fails the run.
"""

from __future__ import annotations

import fcntl
import logging
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from mlpipe.settings import Settings

if TYPE_CHECKING:  # prometheus_client is imported only when metrics are configured (MLPIPE_METRICS_*)
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

PUSH_JOB = "mlpipe"
PUSH_TIMEOUT_S = 10.0
STAGES = ("plan", "chunks", "gate", "index", "publish", "total")
HELP = {
    "mlpipe_last_success_timestamp_seconds": "Unix time the last successful run of this kind finished.",
    "mlpipe_last_run_timestamp_seconds": "Unix time the last run of this kind finished, failed or not.",
    "mlpipe_last_failure_timestamp_seconds": "Unix time the last run of this kind raised an error.",
    "mlpipe_day_timestamp_seconds": "The run's day (score: as_of; monitor: newest published day) at UTC 0h.",
    "mlpipe_rows_scored": "Rows the scoring run published.",
    "mlpipe_rows_quarantined": "Rows the scoring run quarantined.",
    "mlpipe_stage_duration_seconds": "Seconds each stage of the run took (total: the whole run).",
    "mlpipe_monitor_failed": "1 when the monitor found a figure past the job's fail threshold, else 0.",
    "mlpipe_score_psi": "PSI of the newest day's scores against training or the previous published day.",
    "mlpipe_feature_psi_max": "PSI against training of the newest day's most drifted input.",
    "mlpipe_realized_roc_auc": "Realized ROC AUC of the champion on the newest matured day.",
    "mlpipe_realized_day_timestamp_seconds": "The newest matured day with a realized AUC, at UTC 0h.",
    "mlpipe_estimated_roc_auc": "Estimated ROC AUC of the champion on the newest published day.",
}


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def record_score(settings: Settings, summary: dict) -> None:
    """Push and/or write the metrics of a successful scoring run (RunSummary.as_dict())."""
    now = time.time()
    samples = [
        Sample("mlpipe_last_success_timestamp_seconds", {}, now),
        Sample("mlpipe_last_run_timestamp_seconds", {}, now),
        *_known("mlpipe_day_timestamp_seconds", {}, _day_seconds(summary.get("as_of"))),
        *_known("mlpipe_rows_scored", {}, summary.get("rows_scored")),
        *_known("mlpipe_rows_quarantined", {}, summary.get("rows_quarantined")),
        *_stages(summary.get("timings") or {}),
    ]
    _emit(settings, summary["job"], "score", samples, replace_all=True)


def record_monitor(
    settings: Settings, job: str, figures: dict, failed: bool, seconds: float | None = None
) -> None:
    """Push and/or write the metrics of a monitor run (figures from mlpipe.monitor.key_figures)."""
    now = time.time()
    samples = [
        *_known("mlpipe_last_success_timestamp_seconds", {}, None if failed else now),
        Sample("mlpipe_last_run_timestamp_seconds", {}, now),
        Sample("mlpipe_monitor_failed", {}, 1.0 if failed else 0.0),
        *_known("mlpipe_day_timestamp_seconds", {}, _day_seconds(figures.get("day"))),
        *_known("mlpipe_score_psi", {"reference": "training"}, figures.get("score_psi_training")),
        *_known("mlpipe_score_psi", {"reference": "previous"}, figures.get("score_psi_previous")),
        *_known("mlpipe_realized_roc_auc", {}, figures.get("realized_roc_auc")),
        *_known("mlpipe_realized_day_timestamp_seconds", {}, _day_seconds(figures.get("realized_day"))),
        *_known("mlpipe_estimated_roc_auc", {}, figures.get("estimated_roc_auc")),
        *_known("mlpipe_stage_duration_seconds", {"stage": "total"}, seconds),
    ]
    if figures.get("worst_feature"):
        samples += _known(
            "mlpipe_feature_psi_max", {"feature": figures["worst_feature"]}, figures.get("worst_feature_psi")
        )
    # A failed run keeps the group's last success: only the metrics it sends are replaced.
    _emit(settings, job, "monitor", samples, replace_all=not failed)


def record_failure(settings: Settings, job: str, kind: str) -> None:
    """Mark a run of `kind` (score or monitor) that raised: its group keeps the last success's figures."""
    now = time.time()
    samples = [
        Sample("mlpipe_last_run_timestamp_seconds", {}, now),
        Sample("mlpipe_last_failure_timestamp_seconds", {}, now),
    ]
    _emit(settings, job, kind, samples, replace_all=False)


def _known(name: str, labels: dict[str, str], value: float | None) -> list[Sample]:
    """The sample when its value is known; none rather than a made-up zero."""
    return [] if value is None else [Sample(name, labels, float(value))]


def _stages(timings: dict) -> list[Sample]:
    return [
        Sample("mlpipe_stage_duration_seconds", {"stage": stage}, float(timings[f"{stage}_s"]))
        for stage in STAGES
        if timings.get(f"{stage}_s") is not None
    ]


def _day_seconds(day: str | date | None) -> float | None:
    if day is None:
        return None
    day = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def registry_of(samples: list[Sample]) -> CollectorRegistry:
    """A fresh registry holding one gauge per metric name with the samples' values."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges: dict[str, Gauge] = {}
    for name, labels, value in samples:
        if name not in gauges:
            gauges[name] = Gauge(name, HELP[name], sorted(labels), registry=registry)
        (gauges[name].labels(**labels) if labels else gauges[name]).set(value)
    return registry


def _emit(settings: Settings, job: str, kind: str, samples: list[Sample], *, replace_all: bool) -> None:
    if settings.pushgateway_url:
        _push(settings.pushgateway_url, job, kind, samples, replace_all)
    if settings.metrics_file:
        try:
            write_file(settings.metrics_file, job, kind, samples, replace_all=replace_all)
        except OSError as exc:
            log.warning(
                "metrics file %s not written (%s); the %s run of %s is not affected",
                settings.metrics_file,
                exc,
                kind,
                job,
            )


def _push(url: str, job: str, kind: str, samples: list[Sample], replace_all: bool) -> None:
    from prometheus_client import push_to_gateway, pushadd_to_gateway

    send = push_to_gateway if replace_all else pushadd_to_gateway
    try:
        send(url, PUSH_JOB, registry_of(samples), {"mlpipe_job": job, "kind": kind}, timeout=PUSH_TIMEOUT_S)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; a malformed URL is not
        where = _without_secrets(url)
        log.warning("metrics push to %s failed (%s); the %s run of %s is not affected", where, exc, kind, job)


def _without_secrets(url: str) -> str:
    """The gateway's address for a log line: no user, password or query string."""
    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return parts._replace(netloc=host, query="").geturl()


def write_file(path: Path, job: str, kind: str, samples: list[Sample], *, replace_all: bool) -> None:
    """Merge the run's samples into the textfile: lines of other jobs and kinds stay as they were."""
    from prometheus_client import write_to_textfile

    own = {"mlpipe_job": job, "kind": kind}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two jobs finishing at once must not lose each other's lines
        sent = {s.name for s in samples}
        kept = [
            s
            for s in _read(path)
            if not (s.labels.get("mlpipe_job") == job and s.labels.get("kind") == kind)
            or (not replace_all and s.name not in sent)
        ]
        labelled = [Sample(s.name, {**s.labels, **own}, s.value) for s in samples]
        write_to_textfile(str(path), registry_of(kept + labelled))


def _read(path: Path) -> list[Sample]:
    """mlpipe's samples in an existing textfile (other metric names are dropped: the file is mlpipe's)."""
    from prometheus_client.parser import text_string_to_metric_families

    if not path.is_file():
        return []
    try:
        return [
            Sample(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(path.read_text())
            for sample in family.samples
            if sample.name in HELP
        ]
    except ValueError as exc:  # not the text format: start it again rather than fail every run
        log.warning("metrics file %s could not be read (%s); writing it anew", path, exc)
        return []
