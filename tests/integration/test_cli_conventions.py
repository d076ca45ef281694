"""The CLI follows its ecosystem's conventions: --json that parses, group options that work or are
refused, a version's job inferred from its name, piped output never cut, one-line errors, exit codes,
runs show and the counts of a failed run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mlpipe.resources import resource_dir
from mlpipe.validate import GateFailed
from tests.helpers import days_ago, run_cli, score

pytestmark = [pytest.mark.integration]

HEAVY = ("prefect", "sklearn", "xgboost", "great_expectations")


def mlpipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, env=env)


def as_json(out: subprocess.CompletedProcess) -> object:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    """The command failed with exit code 1 and exactly one line on stderr, no traceback."""
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    return lines[0]


def test_quick_commands_import_no_ml_library_nor_prefect(db_url):
    for args in (["runs"], ["models", "list"], ["jobs"], ["lookup", "1"], ["db", "url"]):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "mlpipe.cli", *args], capture_output=True, text=True
        )
        imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
        assert not [m for m in imported if m.split(".")[0] in HEAVY], (args, out.stderr[-2000:])


def test_jobs_lists_name_path_entity_history_and_champion(db_url):
    rows = {row["name"]: row for row in as_json(mlpipe("jobs", "--json"))}
    assert {"churn", "titanic", "wide"} <= set(rows)
    assert rows["churn"]["champion"] == "churn-v1" and rows["churn"]["entity"] == "customer_id (bigint)"
    assert rows["titanic"]["history"].startswith("snapshot") and rows["wide"]["champion"] is None
    assert rows["titanic"]["path"].endswith("titanic/job.yaml")
    table = mlpipe("jobs")
    assert table.returncode == 0 and "churn-v1" in table.stdout


def test_a_long_value_is_never_cut_when_piped(db_url, tmp_path):
    folder = tmp_path / ("a_folder_whose_name_is_long_enough_to_overflow_any_terminal_" * 3)
    shutil.copytree(resource_dir("jobs") / "titanic", folder / "titanic_again")
    out = mlpipe("jobs", env={"MLPIPE_JOBS_PATH": f"/nowhere{os.pathsep}{folder}", "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    assert str(folder / "titanic_again" / "job.yaml") in out.stdout, "the path is whole on one line"
    assert "…" not in out.stdout


def test_jobs_path_as_json_list_and_a_bad_one_in_one_line(db_url, tmp_path):
    shutil.copytree(resource_dir("jobs") / "titanic", tmp_path / "titanic_again")
    rows = as_json(mlpipe("jobs", "--json", env={"MLPIPE_JOBS_PATH": json.dumps([str(tmp_path)])}))
    assert "titanic_again" in {row["name"] for row in rows}
    line = one_error_line(mlpipe("jobs", env={"MLPIPE_JOBS_PATH": "[not json"}))
    assert line.startswith("error: settings from the environment: MLPIPE_JOBS_PATH: not a JSON list")


def test_models_group_options_apply_or_are_refused(db_url):
    listed = mlpipe("models", "--job", "titanic", "list")
    assert listed.returncode == 0 and "titanic-v1" in listed.stdout and "churn-v1" not in listed.stdout
    versions = as_json(mlpipe("models", "--json", "list"))
    assert [v["model_version"] for v in versions] == ["churn-v1"]
    assert as_json(mlpipe("models", "--json", "--job", "titanic"))[0]["model_version"] == "titanic-v1"
    refused = one_error_line(mlpipe("models", "--json", "promote", "churn-v1", "--reason", "x"))
    assert "--json: `models promote` prints no table" in refused
    twice = one_error_line(mlpipe("models", "--job", "churn", "list", "--job", "titanic"))
    assert "--job given twice" in twice


def test_a_version_names_its_job(db_url):
    shown = as_json(mlpipe("models", "show", "titanic-v1", "--json"))
    assert shown["model_version"] == "titanic-v1"
    wrong = one_error_line(mlpipe("models", "show", "titanic-v1", "--job", "churn"))
    assert "titanic-v1 is a version of job titanic, not churn" in wrong
    diff = as_json(mlpipe("models", "diff", "titanic-v1", "titanic-v1", "--json"))
    assert diff["a"] == diff["b"] == "titanic-v1"


def test_lookup_json_parses(db_url, conn, prefect_api):
    run = mlpipe("score", "--job", "titanic", env={"PREFECT_API_URL": prefect_api})
    assert run.returncode == 0, run.stderr
    key = conn.execute("select entity_id from predictions.titanic order by entity_id limit 1").fetchone()[0]
    row = as_json(mlpipe("lookup", "--job", "titanic", "--json", key))
    assert row["entity_id"] == key and 0 <= float(row["score"]) <= 1 and row["model_version"] == "titanic-v1"


def test_runs_show_and_a_failed_gate_run_keeps_its_counts(db_url, conn, prefect_api):
    good = score("churn", days_ago(3))
    conn.execute(  # everyone suddenly fails payments: the score distribution jumps, the gate stops it
        """insert into demo.payments (customer_id, charged_at, amount_cents, status)
           select customer_id, now() - interval '5 days', 999, 'failed' from demo.customers
           cross join generate_series(1, 3)"""
    )
    with pytest.raises(GateFailed):
        score("churn", days_ago(1))

    failed = as_json(mlpipe("runs", "--status", "failed", "--json"))
    assert len(failed) == 1 and failed[0]["status"] == "failed"
    assert failed[0]["rows_scored"] > 0 and failed[0]["rows_quarantined"] is not None, failed[0]
    assert failed[0]["error"].startswith("GateFailed: the output gate of run")
    assert {r["status"] for r in as_json(mlpipe("runs", "--status", "published", "--json"))} == {"published"}

    run_id = failed[0]["run_id"]
    detail = as_json(mlpipe("runs", "show", str(run_id), "--json"))
    assert detail["gates"]["failures"][0].startswith("score distribution shift (PSI)")
    assert detail["gates"]["gx"][0].startswith("expect_column_values_to_be_between")
    assert detail["chunk_count"] == len(detail["chunk_results"]) > 1
    table = mlpipe("runs", "show", str(run_id), env={"COLUMNS": "80"})
    assert table.returncode == 0 and "score distribution shift (PSI)" in table.stdout
    assert failed[0]["error"] in table.stdout, "the error whole, on one line, when piped"

    published = as_json(mlpipe("runs", "show", str(good["run_id"]), "--json"))
    assert published["status"] == "published" and published["timings"]["total_s"] > 0
    assert sum(r["rows"] for r in published["quarantine_reasons"]) == published["rows_quarantined"]
    assert as_json(mlpipe("runs", "--json", "show", str(good["run_id"])))["run_id"] == good["run_id"]


def test_runs_group_filters_are_refused_with_show_and_bad_values_exit_2(db_url):
    assert "filter the list of runs" in one_error_line(mlpipe("runs", "--status", "failed", "show", "1"))
    assert "no run 999999 in mlpipe.runs" in one_error_line(mlpipe("runs", "show", "999999"))
    assert mlpipe("runs", "--status", "bogus").returncode == 2, "a usage error, as click reports it"
    assert mlpipe("models", "--no-such-option").returncode == 2


def test_errors_are_one_line_whatever_the_terminal_width(db_url):
    out = mlpipe("models", "show", "churn-v99", env={"COLUMNS": "40"})
    line = one_error_line(out)
    assert len(line) > 40 and "churn-v99" in line


def test_a_boolean_kind_on_an_integer_column_names_the_column(db_url, tmp_path, prefect_api):
    job = tmp_path / "titanic_flags"
    shutil.copytree(resource_dir("jobs") / "titanic", job)
    spec = (job / "job.yaml").read_text().replace("name: titanic", "name: titanic_flags")
    spec = spec.replace(
        "  passenger_class:", "  is_adult: {kind: boolean}   # but the SQL returns 0/1\n  passenger_class:"
    )
    (job / "job.yaml").write_text(spec)
    sql = (job / "features.sql").read_text()
    (job / "features.sql").write_text(
        sql.replace(
            "titanic.age_years,", "titanic.age_years,\n    (titanic.age_years >= 18)::int as is_adult,"
        )
    )
    line = one_error_line(mlpipe("train", "--job", str(job), env={"PREFECT_API_URL": prefect_api}))
    assert "column is_adult is kind: boolean but the features SQL returns int4" in line
    assert "`is_adult = 1 as is_adult`" in line
