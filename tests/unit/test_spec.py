"""Job specs: the bundled ones load, malformed ones are refused with the field that is wrong."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml

from mlpipe.errors import SpecError
from mlpipe.settings import Settings
from mlpipe.spec import load_job


@pytest.fixture
def churn_yaml() -> dict:
    return yaml.safe_load((Path(__file__).parents[2] / "jobs" / "churn" / "job.yaml").read_text())


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_bundled_jobs_load_by_name():
    churn = load_job("churn", Settings())
    titanic = load_job("titanic", Settings())
    assert churn.entity.type == "bigint" and churn.history
    assert titanic.entity.type == "text" and not titanic.history
    assert set(churn.derived_functions) == {"session_trend", "failed_payment_share"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(name="Churn!"), "name: String should match pattern"),
        (lambda s: s["entity"].update(type="uuid"), "entity.type"),
        (lambda s: s["features"]["plan"].pop("categories"), "needs its list of categories"),
        (lambda s: s["features"]["tenure_days"].update(min=10, max=1), "min 10.0 is above max 1.0"),
        (lambda s: s["model"]["baseline"].update(feature="nope"), "baseline feature 'nope' is not one of"),
        (lambda s: s.update(surprise=1), "surprise: Extra inputs are not permitted"),
        (lambda s: s["model"].update(candidates=[]), "model.candidates"),
        (
            lambda s: s["derived"]["session_trend"].update(function="derived.session_trend"),
            "file.py:function",
        ),
    ],
)
def test_malformed_specs_name_the_problem(tmp_path, churn_yaml, change, message):
    change(churn_yaml)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_job(write(tmp_path, churn_yaml), Settings())


def test_not_yaml_and_unknown_names_are_clear(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(bad, Settings())
    with pytest.raises(SpecError, match="no job of that name"):
        load_job("no_such_job", Settings())


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("name: churn\nentity: [unclosed\n", ":3:1:", "expected ',' or ']'"),
        ("name: churn\n  entity: x\n", ":2:9:", "mapping values are not allowed here"),
        ("name: churn\nentity:\n\t- key\n", ":3:1:", "found character '\\t' that cannot start any token"),
    ],
)
def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path, text, where, problem):
    bad = tmp_path / "job.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_job(bad, Settings())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"job spec {bad}{where} not valid YAML: ")
    assert problem in message


def test_missing_sql_file_is_named(tmp_path, churn_yaml):
    spec = load_job(write(tmp_path, churn_yaml), Settings())
    with pytest.raises(SpecError, match="sources.features: file .*features.sql not found"):
        spec.sql("features")


def test_future_days_are_refused():
    spec = load_job("churn", Settings())
    assert spec.check_as_of(date.today()) == date.today()
    with pytest.raises(SpecError, match="in the future"):
        spec.check_as_of(date.today() + timedelta(days=1))
