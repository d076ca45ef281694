"""A source of integers and doubles is read as one binary numeric block into numpy; NULLs fall back to
CSV with the same results."""

from __future__ import annotations

import shutil
from datetime import date

import numpy as np
import pytest

from mlpipe import train
from mlpipe.copyio import read_numeric_block
from mlpipe.db import connection
from mlpipe.demo import wide
from mlpipe.extract import check_features_source, features_query, plan_chunks
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from tests.helpers import published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture
def wide_job(db_url):
    settings = Settings()
    spec = load_job("wide", settings)
    with connection(db_url) as conn:
        wide.generate(conn, 3000, seed=1)
        conn.commit()
        assert train.train(conn, settings, spec, date.today()).promoted
    return spec


def test_wide_numeric_sources_take_the_binary_path_and_score_the_same_as_csv(db_url, conn, wide_job):
    query = (features_query(wide_job), {"as_of": date.today()})
    assert check_features_source(conn, wide_job, date.today())
    block = read_numeric_block(conn, *query, "entity_id", list(wide_job.features))
    keys, values = block
    assert keys.dtype == np.int64 and values.shape == (3000, 30) and values.dtype.byteorder in "=<"
    expected = conn.execute("select entity_id, f01, f30 from demo.wide order by entity_id").fetchall()
    order = np.argsort(keys)
    assert keys[order].tolist() == [r[0] for r in expected]
    assert values[order][:, 0].tolist() == [r[1] for r in expected]  # exact, and rows line up
    assert values[order][:, 29].tolist() == [r[2] for r in expected]

    fast = score("wide", date.today())
    fast_scores = {k: v[0] for k, v in published(conn, "wide").items()}
    assert fast["rows_scored"] == 3000

    conn.execute("alter table demo.wide alter column f05 drop not null")
    conn.execute("update demo.wide set f05 = null where entity_id = 17")
    assert read_numeric_block(conn, *query, "entity_id", list(wide_job.features)) is None
    slow = score("wide", date.today())

    assert slow["rows_scored"] == 3000
    slow_scores = {k: v[0] for k, v in published(conn, "wide").items()}
    assert {k: v for k, v in slow_scores.items() if k != 17} == {
        k: v for k, v in fast_scores.items() if k != 17
    }


def test_a_null_key_in_the_numeric_block_falls_back_for_its_chunk_only_and_is_quarantined(
    db_url, conn, wide_job, tmp_path
):
    folder = tmp_path / "wide"
    shutil.copytree(wide_job.folder, folder)
    null_row = ", ".join(["0.5::float8"] * len(wide_job.features))
    (folder / "features.sql").write_text(
        (wide_job.folder / "features.sql").read_text().rstrip()
        + f"\nunion all select null::bigint, {null_row}\n"
    )
    spec = load_job(folder / "job.yaml", Settings())
    today = date.today()
    assert check_features_source(conn, spec, today), "still a numeric source: the fast path is chosen"
    _, chunks = plan_chunks(conn, spec, today, 400)
    for chunk in chunks:  # the has-null flag of the key array sends only the last chunk to CSV
        block = read_numeric_block(
            conn,
            features_query(spec, chunk),
            {"as_of": today, "key_lo": chunk.key_lo, "key_hi": chunk.key_hi},
            "entity_id",
            list(spec.features),
        )
        assert (block is None) == chunk.is_last

    result = score(str(folder / "job.yaml"), today)

    assert (result["rows_scored"], result["rows_quarantined"]) == (3000, 1)
    assert len(published(conn, "wide")) == 3000
    quarantined = conn.execute(
        "select entity_id, reason from mlpipe.quarantine where run_id = %s", [result["run_id"]]
    ).fetchall()
    assert len(quarantined) == 1 and quarantined[0][0] is None
    assert quarantined[0][1].startswith("missing key") and "entity_id" in quarantined[0][1]
