"""The training set uses, at each cutoff, only what was known then, and only matured labels."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pytest

from mlpipe.db import connection
from mlpipe.settings import Settings
from mlpipe.spec import load_job
from mlpipe.trainingset import build_training_set, cutoffs_for

pytestmark = [pytest.mark.integration]


def _at(day: date, **delta) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC) + timedelta(**delta)


def _snapshot(db_url):
    settings = Settings()
    spec = load_job("churn", settings)
    with connection(db_url) as conn:
        data = build_training_set(conn, spec, date.today(), settings.chunk_rows)
    order = np.lexsort((data.frame["customer_id"].to_numpy(), data.frame["cutoff"].astype(str).to_numpy()))
    return data, data.matrix[order], data.labels[order]


def test_future_events_and_late_cancellations_do_not_leak(db_url, conn):
    spec = load_job("churn", Settings())
    newest = cutoffs_for(spec, date.today())[-1]
    data, matrix, labels = _snapshot(db_url)
    in_test = data.frame[(data.frame["cutoff"] == newest) & (data.frame["label"] == 0)]
    customer = int(in_test["customer_id"].iloc[0])

    # after the newest cutoff but before the training day: the classic leak
    conn.execute(
        """insert into demo.events (customer_id, event_at, kind)
           select %s, %s, 'support' from generate_series(1, 5)""",
        [customer, _at(newest, seconds=1)],
    )
    conn.execute(
        """insert into demo.payments (customer_id, charged_at, amount_cents, status)
           values (%s, %s, 999, 'failed')""",
        [customer, _at(newest, days=2)],
    )
    # a cancellation after the label window (and after the training day) is no label
    conn.execute(
        "insert into demo.cancellations values (%s, %s, 'other') on conflict (customer_id) do nothing",
        [customer, _at(newest, days=spec.training.horizon_days, seconds=1)],
    )
    _, matrix_after, labels_after = _snapshot(db_url)
    assert np.array_equal(matrix, matrix_after, equal_nan=True)
    assert np.array_equal(labels, labels_after)

    # the control: the same cancellation inside the window does become a positive label
    conn.execute(
        "update demo.cancellations set canceled_at = %s where customer_id = %s",
        [_at(newest, days=1), customer],
    )
    _, _, labels_control = _snapshot(db_url)
    assert labels_control.sum() == labels.sum() + 1


def test_no_cutoff_has_an_unfinished_label_window():
    spec = load_job("churn", Settings())
    for day in (date(2026, 1, 31), date(2026, 3, 1), date.today()):
        assert max(cutoffs_for(spec, day)) + timedelta(days=spec.training.horizon_days) <= day
