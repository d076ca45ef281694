"""predictions.<job>_for(key): exactly one row for any key, the published one or a fallback from the
live model's training rates (the base rate, or the caller's segment's rate), executable by readers."""

from __future__ import annotations

import uuid
from datetime import date

import numpy as np
import psycopg
import pytest
import yaml
from psycopg import sql

from mlpipe import train
from mlpipe.db import connection
from mlpipe.errors import SpecError
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.trainingset import build_training_set
from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

UNKNOWN = 10**12
COLUMNS = "entity_id, score, decision, percentile, model_version, as_of, run_id, reasons, source"


def answers(conn: psycopg.Connection, *args) -> list[tuple]:
    """What a frontend gets from predictions.churn_for(key[, segment])."""
    query = sql.SQL("select {} from predictions.churn_for({})").format(
        sql.SQL(COLUMNS), sql.SQL(", ").join([sql.Placeholder()] * len(args))
    )
    return conn.execute(query, list(args)).fetchall()


@pytest.fixture
def scored(conn):
    return score("churn", days_ago(1))


def test_a_scored_key_gets_its_published_row(conn, scored):
    key, row = next(iter(published(conn).items()))
    (found,) = answers(conn, key)
    assert found[0] == key and found[1:7] == row and found[8] == "model"
    view = conn.execute("select reasons from predictions.churn where entity_id = %s", [key]).fetchone()
    assert found[7] == view[0]


def test_an_unknown_key_gets_one_fallback_row_at_the_training_base_rate(conn, scored):
    (found,) = answers(conn, UNKNOWN)
    key, rate, decision, percentile, model_version, as_of, run_id, reasons, source = found
    stored, counts = conn.execute(
        "select reference -> 'fallback', row_counts from mlpipe.models where model_version = %s",
        [scored["model_version"]],
    ).fetchone()
    assert (key, source, run_id, reasons, as_of) == (UNKNOWN, "fallback", None, None, days_ago(1))
    assert model_version == f"{scored['model_version']}:base_rate"
    assert rate == pytest.approx(stored["base_rate"]) and 0 < rate < 1
    assert decision == (rate >= 0.3)  # the job's threshold
    assert 0 <= percentile <= 100
    assert answers(conn, UNKNOWN, "premium") == [found]  # no segment declared: the base rate


def test_segment_rate_when_the_job_declares_a_segment(db_url, conn, tmp_path, mlpipe_home):
    settings = Settings(home=mlpipe_home, database_url=db_url)
    spec = _churn_variant(tmp_path, settings, {"fallback": {"segment": "plan"}})
    with connection(db_url) as training:
        trained = train.train(training, settings, spec, date.today())
        data = build_training_set(training, spec, date.today(), settings.chunk_rows)
    score(str(spec.folder / "job.yaml"), days_ago(1), trained.model.model_version)

    # Independently: the mean label of each plan in the training set the model was trained on.
    expected = {
        plan: float(np.mean(data.labels[(data.frame["plan"] == plan).to_numpy()]))
        for plan in ("basic", "standard", "premium")
    }
    found = {plan: answers(conn, UNKNOWN, plan)[0] for plan in expected}
    for plan, row in found.items():
        assert row[1] == pytest.approx(expected[plan]) and row[8] == "fallback"
        assert row[4] == f"{trained.model.model_version}:plan={plan}"
    assert len({row[1] for row in found.values()}) == 3, "the plans churn at different rates"
    (base,) = answers(conn, UNKNOWN, "no such plan")
    assert base[1] == pytest.approx(float(np.mean(data.labels)))
    assert base[4] == f"{trained.model.model_version}:base_rate"


def test_a_reader_login_executes_it_and_still_cannot_read_mlpipe(db_url, conn, scored, login_url):
    key = next(iter(published(conn)))
    with connection(login_url("mlpipe_reader"), autocommit=True) as reader:
        assert [r[-1] for r in answers(reader, key)] == ["model"]
        assert [r[-1] for r in answers(reader, UNKNOWN)] == ["fallback"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute("select * from mlpipe.models")
    stranger = f"mlpipe_stranger_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("create role {}").format(sql.Identifier(stranger)))
    try:
        allowed = conn.execute(
            "select has_function_privilege(%s, 'predictions.churn_for(bigint, text)', 'execute')", [stranger]
        ).fetchone()[0]
        assert not allowed, "not executable by PUBLIC: only the reader role (and its members)"
    finally:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(stranger)))
    owner = conn.execute(
        "select pg_get_userbyid(proowner) from pg_proc "
        "where oid = 'predictions.churn_for(bigint, text)'::regprocedure"
    ).fetchone()[0]
    assert owner == "mlpipe_writer"


def test_the_function_is_inlined_into_an_index_lookup(conn, scored):
    plan = "\n".join(r[0] for r in conn.execute("explain select * from predictions.churn_for(42)").fetchall())
    assert "Function Scan" not in plan and "Index Scan" in plan, plan


def test_a_segment_that_is_not_a_categorical_or_boolean_feature_is_one_line(tmp_path):
    settings = Settings()
    for segment in ("tenure_days", "no_such_column"):
        with pytest.raises(SpecError) as error:
            _churn_variant(tmp_path / segment, settings, {"fallback": {"segment": segment}})
        message = str(error.value)
        assert len(message.splitlines()) == 1
        assert f"outputs.fallback.segment {segment!r} is not a categorical or boolean feature" in message
        assert "is_marketing_opt_in, plan" in message  # what is allowed


def _churn_variant(folder, settings: Settings, outputs: dict):
    """The churn job in `folder` with extra outputs, and only its quick candidate."""
    source = load_job("churn", settings).folder
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    raw = yaml.safe_load((source / "job.yaml").read_text())
    raw["outputs"].update(outputs)
    raw["model"]["candidates"] = [c for c in raw["model"]["candidates"] if c["name"] == "logreg"]
    raw["model"]["search_iterations"] = 1
    (folder / "job.yaml").write_text(yaml.safe_dump(raw))
    return load_job(folder / "job.yaml", settings)
