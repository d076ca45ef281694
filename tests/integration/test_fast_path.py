"""Real-shaped sources (a text key, categories with unknown values, NULLs) and the numeric wide shape
are read in binary into Arrow and written with binary COPY; what is published is exactly what the
model gives on the rows as psycopg reads them, and bad rows reach quarantine with their reasons."""

from __future__ import annotations

import math
import shutil
from datetime import date

import numpy as np
import pandas as pd
import pytest
from psycopg import sql

from mlpipe import registry, train
from mlpipe.db import connection
from mlpipe.demo import mixed, wide
from mlpipe.extract import plan_chunks, read_features
from mlpipe.features import to_matrix
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec, load_job
from tests.helpers import published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]

ROWS = 3000


def _trained(db_url: str, job: str, generator) -> JobSpec:
    settings = Settings()
    spec = load_job(job, settings)
    with connection(db_url) as conn:
        generator.generate(conn, ROWS, seed=1)
        conn.commit()
        assert train.train(conn, settings, spec, date.today()).promoted
    return spec


@pytest.fixture
def mixed_job(db_url) -> JobSpec:
    return _trained(db_url, "mixed", mixed)


def _psycopg_frame(conn, spec: JobSpec) -> pd.DataFrame:
    """The source rows as psycopg reads them (row by row, its own type conversions)."""
    columns = [spec.entity.key, *spec.features]
    rows = conn.execute(
        sql.SQL("select {} from demo.{}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(spec.name)
        )
    ).fetchall()
    frame = pd.DataFrame(rows, columns=columns)
    for name, feature in spec.features.items():
        if feature.kind == "numeric":
            frame[name] = frame[name].astype(np.float64)  # None -> NaN
    return frame


def test_mixed_rows_read_as_psycopg_reads_them(conn, mixed_job):
    read = read_features(conn, mixed_job, date.today()).sort_values("entity_id", ignore_index=True)
    expected = _psycopg_frame(conn, mixed_job).sort_values("entity_id", ignore_index=True)
    assert read["entity_id"].tolist() == expected["entity_id"].tolist()
    for name, feature in mixed_job.features.items():
        if feature.kind == "numeric":  # bit for bit, NULL as NaN
            assert np.array_equal(read[name].to_numpy(), expected[name].to_numpy(), equal_nan=True), name
        else:
            assert read[name].tolist() == expected[name].tolist(), name
    assert read["n23"].isna().sum() > 0 and (read["merchant"] == "m-new").sum() > 0  # the shape has both


def test_mixed_scores_are_the_models_on_psycopgs_rows_nulls_and_unknowns_included(conn, mixed_job):
    result = score("mixed", date.today())

    assert (result["rows_scored"], result["rows_quarantined"]) == (ROWS, 0)
    got = {k: v[0] for k, v in published(conn, "mixed").items()}
    frame = _psycopg_frame(conn, mixed_job)
    model = registry.champion(conn, "mixed").load()
    expected = dict(zip(frame["entity_id"], model.predict_proba(to_matrix(frame, mixed_job)), strict=True))
    assert got == expected  # exact: every key, every score
    nulls = frame.loc[frame["n23"].isna(), "entity_id"]
    unknown = frame.loc[frame["merchant"] == "m-new", "entity_id"]
    assert len(nulls) and len(unknown) and all(k in got for k in [*nulls, *unknown])


def test_mixed_bad_rows_are_quarantined_with_reasons(conn, mixed_job, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(mixed_job.folder, folder)
    text = (folder / "job.yaml").read_text()
    text = text.replace("  merchant: {kind: categorical,", "  merchant: {kind: categorical, unknown: reject,")
    text = text.replace("  n01: {kind: numeric}", "  n01: {kind: numeric, max: 3.0}")
    text = text.replace("max_quarantine_rate: 0.01", "max_quarantine_rate: 0.2")
    (folder / "job.yaml").write_text(text)
    (folder / "features.sql").write_text(
        (mixed_job.folder / "features.sql").read_text().rstrip()
        + "\nunion all select null, 'r1', 'plus', 'ch01', 'm0001'"
        + ", 0.5::float8" * len(mixed.NUMERIC)
        + "\n"
    )
    unknown = {r[0] for r in conn.execute("select entity_id from demo.mixed where merchant = 'm-new'")}
    high = {
        r[0] for r in conn.execute("select entity_id from demo.mixed where n01 > 3 and merchant <> 'm-new'")
    }
    assert unknown

    result = score(str(folder / "job.yaml"), date.today())

    reasons = dict(
        conn.execute(
            "select coalesce(entity_id, '<null>'), reason from mlpipe.quarantine where run_id = %s",
            [result["run_id"]],
        ).fetchall()
    )
    assert {k for k, r in reasons.items() if r == "merchant: unknown category m-new"} == unknown
    assert {k for k, r in reasons.items() if r == "n01: above the maximum 3"} == high
    assert reasons["<null>"].startswith("missing key") and "entity_id" in reasons["<null>"]
    assert result["rows_quarantined"] == len(unknown) + len(high) + 1
    assert len(published(conn, "mixed")) == ROWS - len(unknown) - len(high)


def test_wide_scores_are_the_models_on_psycopgs_rows_with_and_without_nulls(db_url, conn):
    spec = _trained(db_url, "wide", wide)
    model = registry.champion(conn, "wide").load()
    conn.execute("alter table demo.wide alter column f05 drop not null")
    conn.execute("update demo.wide set f05 = null where entity_id % 20 = 0")  # within the gate

    result = score("wide", date.today())

    assert result["rows_scored"] == ROWS
    got = {k: v[0] for k, v in published(conn, "wide").items()}
    frame = _psycopg_frame(conn, spec)
    assert frame["f05"].isna().sum() == ROWS // 20
    expected = dict(zip(frame["entity_id"], model.predict_proba(to_matrix(frame, spec)), strict=True))
    assert got == expected


def test_a_null_key_is_read_in_the_last_chunk_only_and_quarantined(db_url, conn, tmp_path):
    spec = _trained(db_url, "wide", wide)
    folder = tmp_path / "wide"
    shutil.copytree(spec.folder, folder)
    null_row = ", ".join(["0.5::float8"] * len(spec.features))
    (folder / "features.sql").write_text(
        (spec.folder / "features.sql").read_text().rstrip() + f"\nunion all select null::bigint, {null_row}\n"
    )
    spec = load_job(folder / "job.yaml", Settings())
    today = date.today()
    _, chunks = plan_chunks(conn, spec, today, 400)
    for chunk in chunks:
        keys = read_features(conn, spec, today, chunk)["entity_id"]
        assert keys.isna().any() == chunk.is_last
        assert keys.dtype == ("Int64" if chunk.is_last else np.int64)  # exact integers either way

    result = score(str(folder / "job.yaml"), today)

    assert (result["rows_scored"], result["rows_quarantined"]) == (ROWS, 1)
    assert len(published(conn, "wide")) == ROWS
    quarantined = conn.execute(
        "select entity_id, reason from mlpipe.quarantine where run_id = %s", [result["run_id"]]
    ).fetchall()
    assert len(quarantined) == 1 and quarantined[0][0] is None
    assert quarantined[0][1].startswith("missing key") and "entity_id" in quarantined[0][1]
    assert not math.isnan(next(iter(published(conn, "wide").values()))[0])
