"""Great Expectations gates: a failed gate stops the run before publish, names the expectation and
shows offending keys; the previous predictions stay live."""

from __future__ import annotations

import pytest

from mlpipe.validate import GateFailed
from tests.helpers import days_ago, history_days, published, run_cli, score

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_api")]


def test_a_large_score_shift_from_the_previous_day_is_stopped(conn):
    before = score("churn", days_ago(3))
    snapshot = published(conn)
    # Everyone suddenly fails payments and files tickets: the score distribution jumps.
    conn.execute(
        """insert into demo.payments (customer_id, charged_at, amount_cents, status)
           select customer_id, now() - interval '5 days', 999, 'failed' from demo.customers
           cross join generate_series(1, 3)"""
    )
    conn.execute(
        """insert into demo.events (customer_id, event_at, kind)
           select customer_id, now() - interval '6 days', 'support' from demo.customers
           cross join generate_series(1, 4)"""
    )
    shift = r"score distribution shift \(PSI\) \d\.\d{3} .* above the job's 0.25"
    with pytest.raises(GateFailed, match=shift) as failure:
        score("churn", days_ago(1))

    message = str(failure.value)
    assert "previous predictions stay live" in message and "max_score_psi" in message
    assert "quarantine" not in message, "a score shift has nothing to do with quarantined rows"
    assert published(conn) == snapshot
    assert set(history_days(conn)) == {days_ago(3)}
    gates = conn.execute(
        "select gates from mlpipe.runs where kind = 'score' and run_id > %s", [before["run_id"]]
    ).fetchone()[0]
    assert gates["passed"] is False and gates["score_psi"] > 0.25
    assert gates["failures"][0].startswith("score distribution shift (PSI)")
    assert gates["gx"][0].startswith("expect_column_values_to_be_between"), "GX's result kept beside it"


def test_a_feature_that_goes_missing_fails_the_chunk_feature_check_with_sample_keys(conn):
    score("churn", days_ago(3))
    snapshot = published(conn)
    conn.execute("delete from demo.events where kind = 'session'")  # days_since_last_session: all null

    gone = r"input days_since_last_session is missing in 100.0% of chunk \d+'s rows, above its allowance"
    with pytest.raises(GateFailed, match=gone) as failure:
        score("churn", days_ago(1))

    assert "days_since_last_session missing in chunk" in str(failure.value)
    assert "sample keys [" in str(failure.value)
    assert published(conn) == snapshot


def test_unknown_categories_are_counted_per_feature_and_shown(conn):
    # passenger_class says `unknown: ignore` (the default): the row is scored, and counted.
    conn.execute(
        """insert into demo.titanic (passenger, sex, age_years, passenger_class, is_survivor)
           values ('Nobody, Mr. Test', 'male', 30, '4th', false),
                  ('Other, Mr. Test', 'male', 31, '4th', false)"""
    )
    result = score("titanic", days_ago(1))
    gates = conn.execute("select gates from mlpipe.runs where run_id = %s", [result["run_id"]]).fetchone()[0]
    assert gates["unknown_categories"] == {"passenger_class": 2}
    shown = run_cli("runs", "show", str(result["run_id"]))
    assert shown.returncode == 0 and "passenger_class 2" in shown.stdout, shown.stdout
