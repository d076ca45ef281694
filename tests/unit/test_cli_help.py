"""Every operator command documents itself and takes --job where a job applies."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlpipe.cli import app


@pytest.mark.parametrize("command", ["train", "score", "backfill", "lookup", "runs", "models"])
def test_job_commands_have_help_and_a_job_option(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "--job" in out.output


@pytest.mark.parametrize("command", ["up", "down", "status", "url", "migrate"])
def test_db_commands_have_help(command):
    out = CliRunner().invoke(app, ["db", command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "Usage" in out.output
