"""Shared fixtures: a real PostgreSQL (the embedded one unless --test-dsn / MLPIPE_TEST_DATABASE_URL
is given), a template database with the demo world and trained models, and Prefect's local API."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.fixtures.fix_db", "tests.fixtures.fix_dask"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-dsn",
        default=os.environ.get("MLPIPE_TEST_DATABASE_URL"),
        help="PostgreSQL 14+ to test against (a superuser; databases are created and dropped). "
        "Default: start the embedded server in a temporary folder.",
    )


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's real local API (SQLite, temporary), shared by every flow in the session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
