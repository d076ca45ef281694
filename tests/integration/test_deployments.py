"""The schedules register against a real local Prefect API with their cron expressions."""

from __future__ import annotations

import asyncio

import pytest
from prefect.client.orchestration import get_client

from deployments.deploy import SCORE_CRON, TRAIN_CRON, build_deployments

pytestmark = [pytest.mark.integration]


def test_deployments_register_with_their_schedules(prefect_api):
    ids = [deployment.apply() for deployment in build_deployments("churn")]

    async def read():
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    registered = {d.name: d for d in asyncio.run(read())}
    assert set(registered) == {"churn-monthly", "churn-daily"}
    crons = {
        name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] for name, d in registered.items()
    }
    assert crons == {"churn-monthly": [(TRAIN_CRON, "UTC")], "churn-daily": [(SCORE_CRON, "UTC")]}
    assert TRAIN_CRON == "0 3 1 * *", "training runs on the 1st of each month"
    assert all(d.parameters == {"job": "churn"} for d in registered.values())
