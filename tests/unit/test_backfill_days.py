from __future__ import annotations

from datetime import date, timedelta

import pytest

from mlpipe.errors import UsageError
from mlpipe.score import days_between


def test_days_are_inclusive_and_ordered():
    assert days_between(date(2026, 2, 27), date(2026, 3, 2)) == [
        date(2026, 2, 27),
        date(2026, 2, 28),
        date(2026, 3, 1),
        date(2026, 3, 2),
    ]


def test_reversed_and_future_ranges_are_refused():
    with pytest.raises(UsageError, match="after its end"):
        days_between(date(2026, 3, 2), date(2026, 3, 1))
    with pytest.raises(UsageError, match="in the future"):
        days_between(date.today(), date.today() + timedelta(days=1))
