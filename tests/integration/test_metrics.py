"""Metrics of a real scoring run and a real monitor run land in the textfile with the run's figures."""

from __future__ import annotations

from datetime import date

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlpipe import metrics, monitor
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_a_scored_and_monitored_day_is_in_the_metrics_file(conn, tmp_path):
    settings = Settings(metrics_file=tmp_path / "mlpipe.prom")
    summary = score("churn", days_ago(45))
    metrics.record_score(settings, summary)
    result = monitor.monitor(conn, load_job("churn", Settings()), date.today())
    metrics.record_monitor(settings, "churn", result.figures, bool(result.failed))

    got = {
        (
            s.name,
            s.labels.get("kind"),
            s.labels.get("stage") or s.labels.get("feature") or s.labels.get("reference"),
        ): s.value
        for family in text_string_to_metric_families((tmp_path / "mlpipe.prom").read_text())
        for s in family.samples
        if s.labels.get("mlpipe_job") == "churn"
    }
    assert got[("mlpipe_rows_scored", "score", None)] == summary["rows_scored"] > 0
    assert got[("mlpipe_rows_quarantined", "score", None)] == summary["rows_quarantined"]
    assert got[("mlpipe_stage_duration_seconds", "score", "total")] == summary["timings"]["total_s"]
    assert {stage for name, kind, stage in got if name == "mlpipe_stage_duration_seconds"} >= {
        "plan",
        "chunks",
        "gate",
        "index",
        "publish",
    }
    figures = result.figures
    assert got[("mlpipe_realized_roc_auc", "monitor", None)] == pytest.approx(figures["realized_roc_auc"])
    assert got[("mlpipe_feature_psi_max", "monitor", figures["worst_feature"])] == pytest.approx(
        figures["worst_feature_psi"]
    )
    assert got[("mlpipe_score_psi", "monitor", "training")] == pytest.approx(figures["score_psi_training"])
    assert got[("mlpipe_monitor_failed", "monitor", None)] == 0
