"""Backfill scores each day as of that day and never moves the latest view backwards."""

from __future__ import annotations

import pytest

from flows.backfill import backfill_flow
from tests.helpers import days_ago, history_days, population, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_backfill_fills_history_and_keeps_the_newest_day_in_the_view(conn):
    newest = score("churn", days_ago(1))

    results = backfill_flow(job="churn", start=days_ago(6), end=days_ago(4))

    assert [r["as_of"] for r in results] == [d.isoformat() for d in (days_ago(6), days_ago(5), days_ago(4))]
    assert not any(r["view_moved"] for r in results)
    assert {r[5] for r in published(conn).values()} == {newest["run_id"]}
    assert history_days(conn) == {
        d: population(conn, d) for d in (days_ago(6), days_ago(5), days_ago(4), days_ago(1))
    }
