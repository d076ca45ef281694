"""Artifacts load only when their bytes and library versions are the ones registered."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from mlpipe import algorithms, artifacts
from mlpipe.errors import ArtifactError

COLUMNS = ["a", "b", "c"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((400, 3)).astype(np.float32)
    return x, (x[:, 0] + 0.2 * rng.random(400) > 0.6).astype(int)


def _fitted(algorithm: str, params: dict, seed: int = 0) -> algorithms.ScoringModel:
    x, y = _data(seed)
    inputs = algorithms.FitInput(
        x[:300], y[:300], x[300:], y[300:], COLUMNS, seed, [0, 0, 0], [False] * 3, float("inf")
    )
    return algorithms.get(algorithm).fit(params, inputs)


def _load(path: str, sha: str, algorithm: str, versions: dict | None = None) -> algorithms.ScoringModel:
    return artifacts.load(path, sha, algorithm, COLUMNS, versions or artifacts.library_versions())


@pytest.fixture
def hgb(tmp_path):
    x, y = _data()
    model = algorithms.SklearnModel(COLUMNS, HistGradientBoostingClassifier(max_iter=20).fit(x, y))
    path, sha = artifacts.save(model, tmp_path)
    return model, path, sha, x


def test_pickled_model_loads_with_matching_hash_and_version(hgb):
    model, path, sha, x = hgb
    loaded = _load(path, sha, "hist_gradient_boosting")
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert sha == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_pickle_from_another_scikit_learn_is_refused(hgb):
    _, path, sha, _ = hgb
    versions = {**artifacts.library_versions(), "scikit-learn": "0.24.2"}
    with pytest.raises(ArtifactError, match="pickled by scikit-learn 0.24.2 is not loaded"):
        _load(path, sha, "hist_gradient_boosting", versions)


def test_wrong_hash_is_refused_before_unpickling(hgb):
    _, path, _, _ = hgb
    with pytest.raises(ArtifactError, match="does not match its registered sha256"):
        _load(path, "0" * 64, "hist_gradient_boosting")


def test_calibration_maps_are_monotone_and_applied():
    platt = artifacts.Calibration("sigmoid", {"a": 2.0, "b": -1.0})
    iso = artifacts.Calibration("isotonic", {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.2, 0.9]})
    scores = np.linspace(0.01, 0.99, 50)
    for calibration in (platt, iso):
        mapped = calibration.apply(scores)
        assert (np.diff(mapped) >= 0).all() and ((mapped >= 0) & (mapped <= 1)).all()
    assert iso.apply(np.array([0.5]))[0] == pytest.approx(0.2)
    assert artifacts.Calibration.from_dict(platt.as_dict()) == platt


@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("logistic_regression", {"C": 1.0}),
        ("xgboost", {"max_depth": 2, "num_boost_round": 20}),
        ("hist_gradient_boosting", {"max_iter": 20}),
    ],
)
def test_every_algorithm_round_trips_under_its_own_hash_and_suffix(tmp_path, algorithm, params):
    model = _fitted(algorithm, params)
    path, sha = artifacts.save(model, tmp_path)
    assert path == str(tmp_path / f"{sha}.{algorithms.get(algorithm).suffix}")
    x, _ = _data()
    loaded = _load(path, sha, algorithm)
    assert loaded.algorithm == algorithm
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))


def test_same_version_name_from_two_databases_keeps_both_artifacts(tmp_path):
    """Two databases sharing one artifact store each train their churn-v1: neither overwrites the other."""
    store = tmp_path / "artifacts" / "churn"
    first = _fitted("xgboost", {"max_depth": 2, "num_boost_round": 20}, seed=1)
    second = _fitted("xgboost", {"max_depth": 3, "num_boost_round": 30}, seed=2)
    first_row, second_row = artifacts.save(first, store), artifacts.save(second, store)
    assert first_row[1] != second_row[1], "two different models"
    x, _ = _data()
    artifacts._cache.clear()  # load from the files, not from this process's cache
    assert np.array_equal(_load(*first_row, "xgboost").predict_proba(x), first.predict_proba(x))
    assert np.array_equal(_load(*second_row, "xgboost").predict_proba(x), second.predict_proba(x))


def test_saving_again_leaves_the_file_and_a_changed_one_is_not_overwritten(tmp_path):
    model = _fitted("logistic_regression", {"C": 1.0})
    path, sha = artifacts.save(model, tmp_path)
    assert artifacts.save(model, tmp_path) == (path, sha)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{sha}.json"], "no temporary files left"
    with open(path, "ab") as changed:
        changed.write(b" ")
    with pytest.raises(ArtifactError, match="exists but its content hashes to"):
        artifacts.save(model, tmp_path)
    assert open(path, "rb").read().endswith(b" "), "the changed file is left for the operator to see"


def test_an_unknown_algorithm_is_refused_by_name():
    with pytest.raises(ArtifactError, match="unknown model algorithm 'lightgbm'; this mlpipe knows"):
        algorithms.get("lightgbm")


def test_logit_is_finite_at_zero_and_one():
    values = artifacts.logit(np.array([0.0, 0.5, 1.0]))
    assert np.isfinite(values).all() and values[1] == 0.0
    assert values[0] == pytest.approx(-values[2])


def test_xgboost_keeps_native_categorical_inputs_through_its_artifact():
    rng = np.random.default_rng(0)
    x = rng.random((2000, 2)).astype(np.float32)
    x[:, 1] = rng.integers(0, 40, 2000)  # category codes, their effect unrelated to their order
    x[rng.random(2000) < 0.1, 1] = np.nan  # NULL or unknown: missing
    y = ((np.nan_to_num(x[:, 1], nan=1) % 3 == 0) ^ (x[:, 0] > 0.8)).astype(int)
    inputs = algorithms.FitInput(
        x[:1500], y[:1500], x[1500:], y[1500:], ["a", "b"], 0, [0, 0], [False, True], float("inf")
    )
    model = algorithms.get("xgboost").fit({"num_boost_round": 20, "max_depth": 3}, inputs)
    loaded = algorithms.XGBoostModel.from_bytes(model.to_bytes(), ["a", "b"])

    assert loaded.booster.feature_types == ["q", "c"]
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))
    # A category set split: one tree separates the codes that are multiples of 3 from the rest.
    assert ((loaded.predict_proba(x[1500:]) > 0.5) == y[1500:]).mean() > 0.95
