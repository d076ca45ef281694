"""Shared SQL pieces: written once beside the job, read by every source as a CTE named after the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlpipe.errors import SpecError
from mlpipe.settings import Settings
from mlpipe.spec import load_job

CHURN = Path(__file__).parents[2] / "jobs" / "churn"


def test_churn_writes_the_active_filter_once_and_every_source_reads_it():
    spec = load_job("churn", Settings())
    filters = [path.name for path in CHURN.glob("*.sql") if "from demo.cancellations" in path.read_text()]
    # the labels SQL reads cancellations for its label, not to decide who is active
    assert sorted(filters) == ["active_customers.sql", "labels.sql"]
    assert "canceled_at < %(as_of)s" not in (CHURN / "labels.sql").read_text()
    for source in ("population", "features", "labels"):
        query = spec.sql(source)
        assert query.startswith('with "active_customers" as not materialized (\n')
        assert query.count("canceled_at < %(as_of)s::timestamptz") == 1
        assert "from active_customers" in query


def test_a_job_without_shared_pieces_reads_its_files_as_they_are():
    spec = load_job("titanic", Settings())
    assert spec.sql("features") == (spec.folder / spec.sources.features).read_text()


def _copy(tmp_path: Path, shared: list[str]) -> Path:
    for path in CHURN.iterdir():
        if path.suffix in (".sql", ".py"):
            (tmp_path / path.name).write_text(path.read_text())
    spec = yaml.safe_load((CHURN / "job.yaml").read_text())
    spec["sources"]["shared"] = shared
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "job.yaml"


def test_a_missing_shared_file_is_named(tmp_path):
    spec = load_job(_copy(tmp_path, ["active_customers.sql", "gone.sql"]), Settings())
    with pytest.raises(SpecError, match="sources.shared: file .*gone.sql not found"):
        spec.sql("population")


@pytest.mark.parametrize("name", ["Active.sql", "active customers.sql", "../x.sql", "active.txt"])
def test_a_shared_file_must_be_a_plain_name(tmp_path, name):
    with pytest.raises(SpecError, match="sources.shared.0: String should match pattern"):
        load_job(_copy(tmp_path, [name]), Settings())
