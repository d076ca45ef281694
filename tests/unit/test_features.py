"""Row checks and encoding, on frames shaped like what COPY returns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpipe.features import (
    MISSING_KEY,
    baseline_values,
    entity_keys,
    find_bad_rows,
    matrix_columns,
    row_rules,
    to_matrix,
)
from mlpipe.settings import Settings
from mlpipe.spec import load_job


@pytest.fixture(scope="module")
def churn():
    return load_job("churn", Settings())


def frame(**overrides) -> pd.DataFrame:
    base = {
        "customer_id": [1, 2, 3],
        "tenure_days": [100.0, 200.0, 300.0],
        "plan": ["basic", "premium", "standard"],
        "is_marketing_opt_in": [True, False, True],
        "sessions_30d": [3.0, 0.0, None],
        "sessions_prev_30d": [6.0, 1.0, 2.0],
        "days_since_last_session": [1.0, None, 4.0],
        "support_tickets_30d": [0.0, 1.0, 0.0],
        "payments_90d": [3.0, 3.0, 0.0],
        "payments_failed_90d": [0.0, 2.0, 0.0],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_clean_rows_pass(churn):
    assert find_bad_rows(frame(), churn).isna().all()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"customer_id": [1, None, 3]}, MISSING_KEY.format(key="customer_id")),
        ({"customer_id": pd.array([1, None, 3], dtype="Int64")}, MISSING_KEY.format(key="customer_id")),
        ({"tenure_days": [100.0, -5.0, 300.0]}, "tenure_days: below the minimum 0"),
        ({"tenure_days": [100.0, None, 300.0]}, "tenure_days: missing"),
        ({"tenure_days": [100.0, np.inf, 300.0]}, "tenure_days: not a finite number"),
        ({"plan": ["basic", "gold", "standard"]}, "plan: unknown category gold"),
        ({"sessions_prev_30d": [6.0, -1.0, 2.0]}, "sessions_prev_30d: below the minimum 0"),
    ],
)
def test_each_impossible_value_gets_its_reason(churn, overrides, reason):
    reasons = find_bad_rows(frame(**overrides), churn)
    assert reasons.tolist() == [None, reason, None]


def test_duplicate_keys_are_all_flagged(churn):
    reasons = find_bad_rows(frame(customer_id=[7, 7, 8]), churn)
    assert reasons.tolist() == ["duplicate key", "duplicate key", None]


def test_the_first_rule_that_flags_a_row_names_it(churn):
    # Row 1 breaks three rules at once; row 2 only the last of them.
    reasons = find_bad_rows(
        frame(customer_id=[5, None, 6], tenure_days=[1.0, -1.0, 2.0], plan=["basic", "gold", "tin"]), churn
    )
    assert reasons.tolist() == [
        None,
        MISSING_KEY.format(key="customer_id"),
        "plan: unknown category tin",
    ]


def test_every_reason_comes_from_one_rule_list(churn):
    """find_bad_rows flags exactly the union of the rules' masks, each row with one rule's reason."""
    bad = frame(
        customer_id=[1, 1, None],
        tenure_days=[np.inf, 5.0, None],
        plan=["basic", "gold", "standard"],
        sessions_prev_30d=[6.0, -1.0, np.nan],
    )
    rules = list(row_rules(bad, churn))
    flagged = np.logical_or.reduce([mask for mask, _ in rules])
    reasons = find_bad_rows(bad, churn)
    assert reasons.notna().tolist() == flagged.tolist() == [True, True, True]
    texts = {r for _, r in rules if isinstance(r, str)} | {"plan: unknown category gold"}
    assert set(reasons) <= texts


def test_keys_of_checked_rows_are_exact_integers(churn):
    checked = frame(customer_id=pd.array([2**53 + 1, None, 7], dtype="Int64")).iloc[[0, 2]]
    keys = entity_keys(checked, churn)
    assert keys.dtype == np.int64 and keys.tolist() == [2**53 + 1, 7]


def test_matrix_encodes_kinds_and_missing_rules(churn):
    matrix = to_matrix(frame(), churn)
    columns = matrix_columns(churn)
    assert matrix.shape == (3, len(columns)) and matrix.dtype == np.float32
    col = {name: matrix[:, i] for i, name in enumerate(columns)}
    assert col["plan=basic"].tolist() == [1, 0, 0] and col["plan=premium"].tolist() == [0, 1, 0]
    assert col["is_marketing_opt_in"].tolist() == [1, 0, 1]
    assert col["sessions_30d"].tolist() == [3, 0, 0], "missing: zero fills with 0"
    assert np.isnan(col["days_since_last_session"][1]), "missing: impute leaves NaN for the model"
    assert col["session_trend"].tolist() == pytest.approx([4 / 7, 1 / 2, 1 / 3])
    assert col["failed_payment_share"].tolist() == pytest.approx([0, 2 / 3, 0])


def test_baseline_rule_follows_its_direction_and_fills_missing(churn):
    matrix = to_matrix(frame(), churn)
    values = baseline_values(matrix, churn)  # days_since_last_session, higher is positive
    assert values.tolist() == [1.0, 2.5, 4.0]


def test_one_hot_is_the_indicator_of_each_category_zero_for_missing_and_unknown():
    from mlpipe.features import category_codes, one_hot

    categories = [f"c{i}" for i in range(50)]
    values = pd.Series(["c3", None, "zz", "c49", "c3", "c0"], dtype="str")
    out = np.full((len(values), len(categories)), 7.0, dtype=np.float32)
    one_hot(category_codes(values, categories), out)
    naive = np.column_stack([(values.to_numpy(dtype=object) == c).astype(np.float32) for c in categories])
    assert np.array_equal(out, naive) and out.sum() == 4


@pytest.fixture(scope="module")
def mixed():
    return load_job("mixed", Settings())


def _mixed_frame(mixed_spec, **overrides) -> pd.DataFrame:
    base = {"entity_id": ["a", "b", "c", "d"], "region": ["r1", None, "r5", "r0"]}
    base["plan"] = ["pro", "basic", "team", None]
    base["channel"] = ["ch00", "ch11", "ch03", "ch03"]
    base["merchant"] = ["m0007", "m-new", None, "m0999"]
    base.update({n: [0.5, None, -1.0, 2.0] for n, f in mixed_spec.features.items() if f.kind == "numeric"})
    base.update(overrides)
    return pd.DataFrame(base)


def test_xgboost_only_jobs_give_each_category_one_column_of_codes_missing_and_unknown_as_nan(mixed):
    from mlpipe.features import categorical_columns, native_categoricals

    assert native_categoricals(mixed)
    columns = matrix_columns(mixed)
    assert len(columns) == 30 and columns[:4] == ["region", "plan", "channel", "merchant"]
    assert categorical_columns(mixed) == [True] * 4 + [False] * 26
    matrix = to_matrix(_mixed_frame(mixed), mixed)
    assert matrix.shape == (4, 30) and matrix.dtype == np.float32
    # Codes are positions in the spec's categories; NULL and a category it does not list are missing.
    np.testing.assert_array_equal(matrix[:, 0], [1, np.nan, 5, 0])
    np.testing.assert_array_equal(matrix[:, 1], [2, 0, 3, np.nan])
    np.testing.assert_array_equal(matrix[:, 3], [7, np.nan, np.nan, 999])
    np.testing.assert_array_equal(matrix[:, 4], [0.5, np.nan, -1.0, 2.0])


def test_codes_follow_the_categories_the_model_was_trained_with_not_todays_spec(mixed):
    trained = {"plan": ["team", "pro"]}  # the model's own list: another order, fewer values
    matrix = to_matrix(_mixed_frame(mixed), mixed, trained)
    np.testing.assert_array_equal(matrix[:, 1], [1, np.nan, 0, np.nan])


def test_a_job_with_a_scikit_learn_candidate_keeps_one_hot_for_every_candidate(churn):
    from mlpipe.features import native_categoricals

    assert not native_categoricals(churn)
    assert [c for c in matrix_columns(churn) if c.startswith("plan")] == [
        f"plan={c}" for c in churn.features["plan"].categories
    ]
