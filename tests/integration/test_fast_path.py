"""A source of fixed-width numbers is read with binary COPY into numpy; NULLs fall back to CSV with
the same results."""

from __future__ import annotations

from datetime import date

import pytest

from mlpipe import train
from mlpipe.copyio import copy_out_fixed
from mlpipe.db import connection
from mlpipe.demo import wide
from mlpipe.extract import check_features_source, features_query
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
    layout = check_features_source(conn, wide_job, date.today())
    assert layout is not None and layout[0] == ("entity_id", ">i8") and len(layout) == 31
    columns = copy_out_fixed(conn, features_query(wide_job), {"as_of": date.today()}, layout)
    assert len(columns["entity_id"]) == 3000 and columns["f01"].dtype.byteorder in "=<"

    fast = score("wide", date.today())
    fast_scores = {k: v[0] for k, v in published(conn, "wide").items()}
    assert fast["rows_scored"] == 3000

    conn.execute("alter table demo.wide alter column f05 drop not null")
    conn.execute("update demo.wide set f05 = null where entity_id = 17")
    assert copy_out_fixed(conn, features_query(wide_job), {"as_of": date.today()}, layout) is None
    slow = score("wide", date.today())

    assert slow["rows_scored"] == 3000
    slow_scores = {k: v[0] for k, v in published(conn, "wide").items()}
    assert {k: v for k, v in slow_scores.items() if k != 17} == {
        k: v for k, v in fast_scores.items() if k != 17
    }
