"""Reasons per row: every published row says which features drove its score, in plain jsonb."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpipe.explain import job_reason_names
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import TODAY, days_ago, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_published_rows_carry_their_top_reasons(db_url, conn):
    score("churn", TODAY)
    spec = load_job("churn", Settings())
    names = set(spec.features) | set(spec.derived)
    rows = conn.execute("select entity_id, score, reasons from predictions.churn order by score").fetchall()
    assert len(rows) > 1000
    for _, _, reasons in rows:
        assert len(reasons) == 3 and {r["feature"] for r in reasons} <= names
        sizes = [abs(r["contribution"]) for r in reasons]
        assert sizes == sorted(sizes, reverse=True), "largest first"

    fit = conn.execute(
        "select m.reference -> 'explainer' ->> 'r2' from mlpipe.models m"
        " join mlpipe.model_aliases a using (model_id) where a.job = 'churn' and a.alias = 'champion'"
    ).fetchone()[0]
    assert float(fit) > 0.8, "the surrogate follows the model on validation rows"

    # Stored compactly, read as JSON: the day in history keeps the codes the view's JSON comes from,
    # and the operator's lookup of that day in history shows the same reasons as the view.
    entity, codes = conn.execute(
        "select entity_id, reason_codes from predictions.churn_history where as_of = %s limit 1", [TODAY]
    ).fetchone()
    shown = {key: reasons for key, _, reasons in rows}[entity]
    order = job_reason_names(spec)  # codes count in the job's features: [position, thousandths]
    assert [[order.index(r["feature"]) + 1, round(r["contribution"] * 1000)] for r in shown] == codes
    out = subprocess.run(
        [sys.executable, "-m", "mlpipe.cli", "lookup", str(entity), "--as-of", str(TODAY), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["reasons"] == shown

    # The reasons explain the score: the riskiest tenth is pushed up, the safest tenth down.
    first = np.array([r[2][0]["contribution"] for r in rows])
    tenth = len(rows) // 10
    assert (first[-tenth:] > 0).mean() > 0.8
    assert (first[:tenth] < 0).mean() > 0.8


def test_reasons_for_text_keys(db_url, conn):
    score("titanic", TODAY)
    reasons = [r[0] for r in conn.execute("select reasons from predictions.titanic")]
    assert reasons and all(len(r) == 2 for r in reasons)
    assert {r[0]["feature"] for r in reasons} <= set(load_job("titanic", Settings()).features)


def test_reasons_need_a_model_trained_with_them(db_url, conn):
    conn.execute("update mlpipe.models set reference = reference - 'explainer' where job = 'churn'")
    with pytest.raises(Exception, match=r"outputs\.reasons needs a model trained with reasons support"):
        score("churn", TODAY)


def _view_rule_version(conn) -> int:
    """The transaction that last wrote the view's definition (replacing a view rewrites its rule)."""
    return conn.execute(
        "select xmin::text::bigint from pg_rewrite where ev_class = 'predictions.churn'::regclass"
    ).fetchone()[0]


def test_keeping_fewer_reasons_redefines_the_reasons_function_not_the_view(db_url, conn, tmp_path):
    score("churn", days_ago(2))
    rule = _view_rule_version(conn)
    definition = conn.execute("select pg_get_viewdef('predictions.churn')").fetchone()[0]
    assert "mlpipe_data.churn_reasons(reason_codes, reasons)" in definition, "one call, planned once"

    folder = tmp_path / "churn"
    shutil.copytree(Path(load_job("churn", Settings()).folder), folder)
    raw = yaml.safe_load((folder / "job.yaml").read_text())
    raw["outputs"]["reasons"] = 2
    (folder / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    score(str(folder / "job.yaml"), days_ago(1))

    reasons = [r[0] for r in conn.execute("select reasons from predictions.churn")]
    assert reasons and all(len(r) == 2 for r in reasons), "the function now builds two"
    assert _view_rule_version(conn) == rule, "the view readers hold was not replaced"
