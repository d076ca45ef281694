"""A run records the digest of the spec it planned with; a chunk that finds another spec refuses."""

from __future__ import annotations

import shutil

import pytest
import yaml

from mlpipe.chunks import score_chunk, spec_digest
from mlpipe.errors import SpecError
from mlpipe.score import ScoringRun
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import days_ago

pytestmark = pytest.mark.integration


def test_a_chunk_refuses_a_spec_edited_since_the_run_planned(db_url, conn, tmp_path):
    folder = tmp_path / "churn"
    shutil.copytree(load_job("churn", Settings()).folder, folder)
    path = folder / "job.yaml"
    settings = Settings()
    spec = load_job(path, settings)

    with ScoringRun.begin(db_url, settings, spec, days_ago(1)) as run:
        ctx = run.context
        recorded = conn.execute(
            "select spec_digest from mlpipe.runs where run_id = %s", [run.run_id]
        ).fetchone()[0]
        assert recorded == ctx.spec_digest == spec_digest(spec)
        assert len(run.chunks) >= 2

        path.write_text(path.read_text())  # touched, not changed: the digest is of the content
        assert score_chunk(ctx, run.chunks[0]).rows_scored > 0

        edited = yaml.safe_load(path.read_text())
        edited["outputs"]["threshold"] = 0.9
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        with pytest.raises(SpecError, match=rf"changed while run {run.run_id} was scoring .* re-run the day"):
            score_chunk(ctx, run.chunks[1])

    done = conn.execute("select chunk_no from mlpipe.run_chunks where run_id = %s", [run.run_id]).fetchall()
    assert done == [(run.chunks[0].chunk_no,)], "the refused chunk wrote nothing"
