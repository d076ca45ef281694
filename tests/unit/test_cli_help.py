"""Every operator command documents itself and takes --job where a job applies; the global options."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mlpipe import __version__
from mlpipe.cli import app
from mlpipe.cli.common import complete_job, job_of_version
from mlpipe.spec import ALGORITHM_NAMES


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


@pytest.mark.parametrize("command", [["runs", "show"], ["jobs"], ["lookup"], ["runs"]])
def test_inspecting_commands_take_json(command):
    out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--json" in out.output, out.output


def test_version_quiet_and_verbose():
    out = subprocess.run([sys.executable, "-m", "mlpipe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == f"mlpipe {__version__}\n"
    helped = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--quiet" in helped.output and "--verbose" in helped.output
    both = subprocess.run(
        [sys.executable, "-m", "mlpipe.cli", "--quiet", "--verbose", "jobs"], capture_output=True, text=True
    )
    assert both.returncode == 1 and both.stderr.count("\n") == 1 and "contradict" in both.stderr


def test_importing_the_cli_loads_no_ml_library_nor_prefect():
    code = "import sys, mlpipe.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {m0}))"
    heavy = "{'prefect', 'sklearn', 'xgboost', 'great_expectations', 'pandas'}"
    out = subprocess.run([sys.executable, "-c", code.format(m0=heavy)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_spec_knows_the_algorithms_by_name():
    from mlpipe.algorithms import ALGORITHMS

    assert tuple(ALGORITHMS) == ALGORITHM_NAMES


def test_job_names_complete_and_versions_name_their_job():
    assert complete_job("ti") == ["titanic"]
    assert {"churn", "titanic", "wide"} <= set(complete_job(""))
    assert job_of_version("credit_risk-v12") == "credit_risk" and job_of_version("3") is None
