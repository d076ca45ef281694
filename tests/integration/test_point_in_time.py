"""Features and scores as of a day use only data from before that day."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from tests.helpers import days_ago, published, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def _midnight(day) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _plant(conn, customer_id: int, at: datetime) -> None:
    """Activity that would change every churn feature of one customer: sessions, tickets, failures."""
    conn.execute(
        """insert into demo.events (customer_id, event_at, kind)
           select %s, %s, kind
           from unnest(array['session', 'session', 'session', 'support', 'support']) as kind""",
        [customer_id, at],
    )
    conn.execute(
        """insert into demo.payments (customer_id, charged_at, amount_cents, status)
           select %s, %s, 999, 'failed' from generate_series(1, 3)""",
        [customer_id, at],
    )


def test_rows_stamped_after_as_of_change_nothing(conn):
    day = days_ago(10)
    before = score("churn", day)
    scores_before = published(conn)
    customer = min(scores_before)

    _plant(conn, customer, _midnight(day))  # the first instant that is no longer before as_of
    _plant(conn, customer, _midnight(day) + timedelta(days=3))
    conn.execute(
        """insert into demo.cancellations (customer_id, canceled_at, reason) values (%s, %s, 'other')
           on conflict (customer_id) do nothing""",
        [customer, _midnight(day) + timedelta(hours=1)],
    )
    after = score("churn", day)

    assert after["run_id"] != before["run_id"]
    rescored = published(conn)
    assert {k: v[:3] for k, v in rescored.items()} == {k: v[:3] for k, v in scores_before.items()}


def test_the_same_rows_stamped_before_as_of_do_change_the_score(conn):
    # The control for the test above: the planted rows are seen when they are in the past.
    day = days_ago(10)
    score("churn", day)
    customer = min(published(conn))
    original = published(conn)[customer][0]

    _plant(conn, customer, _midnight(day) - timedelta(microseconds=1))
    score("churn", day)

    assert published(conn)[customer][0] != original
