"""The output gate's checks, without a database or Prefect: each one can fail, and says what it saw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipe.validate import allowed_missing, check_output, missing_report, population_stability

COLUMNS = ["rows_in", "rows_scored", "rows_quarantined", "min_score", "max_score"]
NO_MISSING = pd.DataFrame(columns=["chunk_no", "column", "missing_over_allowance", "sample_keys"])


def _chunks(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _failed(chunks: pd.DataFrame, population: int = 200, missing=NO_MISSING, psi=None) -> set[str]:
    failures = check_output(chunks, missing, population, 0.01, psi, 0.25)
    return {f.column for f in failures}


def test_a_complete_clean_output_passes():
    assert _failed(_chunks((100, 100, 0, 0.01, 0.9), (100, 99, 1, 0.02, 0.95))) == set()


def test_rows_lost_between_plan_and_chunks_fail_the_gate():
    assert _failed(_chunks((100, 100, 0, 0.1, 0.9), (90, 90, 0, 0.1, 0.9))) == {"rows_in", "rows_scored"}


def test_too_many_quarantined_rows_fail_the_gate():
    assert _failed(_chunks((100, 95, 5, 0.1, 0.9), (100, 100, 0, 0.1, 0.9))) >= {"rows_quarantined"}


def test_scores_outside_zero_one_fail_the_gate():
    assert _failed(_chunks((100, 100, 0, -0.1, 0.9), (100, 100, 0, 0.1, 1.2))) == {"min_score", "max_score"}


def test_an_input_missing_over_its_allowance_fails_the_gate():
    missing = pd.DataFrame(
        [{"chunk_no": 3, "column": "sessions_30d", "missing_over_allowance": 0.2, "sample_keys": [7]}]
    )
    assert _failed(_chunks((200, 200, 0, 0.1, 0.9)), missing=missing) == {"missing_over_allowance"}


def test_a_score_shift_over_the_bound_fails_the_gate():
    assert _failed(_chunks((200, 200, 0, 0.1, 0.9)), psi=0.3) == {"score_psi"}
    assert _failed(_chunks((200, 200, 0, 0.1, 0.9)), psi=0.1) == set()


def test_missing_report_names_keys_only_over_the_allowance():
    matrix = np.array([[np.nan, 1.0], [np.nan, 2.0], [3.0, np.nan], [4.0, 4.0]])
    keys = np.array([10, 11, 12, 13])
    reference = {"a": {"missing_share": 0.1}, "b": {"missing_share": 0.3}}
    report = missing_report(matrix, keys, ["a", "b"], reference)
    assert report["a"]["share"] == 0.5 and report["a"]["allowed"] == allowed_missing(0.1) == pytest.approx(
        0.2
    )
    assert report["a"]["sample_keys"] == [10, 11]
    assert report["b"]["share"] == 0.25 and "sample_keys" not in report["b"]


def test_the_same_distribution_has_no_shift():
    assert population_stability([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert population_stability([30, 20, 10], [10, 20, 30]) > 0.25


def test_failures_are_restated_in_the_operators_words_with_gx_beside():
    failures = check_output(_chunks((4519, 4456, 63, 0.1, 0.9)), NO_MISSING, 4519, 0.01, 0.3, 0.25)
    words = [str(f) for f in failures]
    assert words == [
        "quarantine rate 1.4% (63 of 4,519) is above the job's 1.0%",
        "score distribution shift (PSI) 0.300 against the previous published day is above the job's 0.25",
    ]
    assert failures[0].gx.startswith("expect_column_sum_to_be_between: observed 63")


def test_the_psi_hint_does_not_point_at_quarantine():
    from mlpipe.validate import GateFailed

    failures = check_output(_chunks((200, 200, 0, 0.1, 0.9)), NO_MISSING, 200, 0.01, 0.3, 0.25)
    message = str(GateFailed("the output gate of run 7 (churn 2026-11-23)", failures, None, 7))
    assert "quarantine" not in message and "outputs.max_score_psi" in message and "runs show 7" in message


def test_a_chunk_refuses_non_finite_scores_before_it_writes():
    # The gate no longer carries a null-score check that could not fail: this is where it is enforced.
    from types import SimpleNamespace

    from mlpipe.algorithms import LinearModel
    from mlpipe.chunks import _predict
    from mlpipe.errors import RunFailedError
    from mlpipe.extract import Chunk

    ones = np.ones(2)
    model = LinearModel(["a", "b"], ones, np.zeros(2), ones, np.array([1.0, np.nan]), 0.0)
    matrix = np.array([[1.0, 2.0]], dtype=np.float32)
    with pytest.raises(RunFailedError, match="model churn-v9 produced non-finite scores in chunk 3"):
        _predict(model, matrix, SimpleNamespace(model_version="churn-v9"), Chunk(3, 0, 10, False))
    finite = LinearModel(["a", "b"], ones, np.zeros(2), ones, np.array([1.0, 0.5]), 0.0)
    assert np.isfinite(
        _predict(finite, matrix, SimpleNamespace(model_version="churn-v9"), Chunk(3, 0, 10, False))
    ).all()
