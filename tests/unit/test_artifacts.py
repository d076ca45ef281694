"""Artifacts load only when their bytes and library versions are the ones registered."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from mlpipe import artifacts
from mlpipe.errors import ArtifactError


@pytest.fixture
def hgb(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((400, 3)).astype(np.float32)
    y = (x[:, 0] + 0.2 * rng.random(400) > 0.6).astype(int)
    model = artifacts.SklearnModel(["a", "b", "c"], HistGradientBoostingClassifier(max_iter=20).fit(x, y))
    path, sha = artifacts.save(model, tmp_path, "m.pkl")
    return model, path, sha, x


def test_pickled_model_loads_with_matching_hash_and_version(hgb):
    model, path, sha, x = hgb
    loaded = artifacts.load(
        path, sha, "hist_gradient_boosting", ["a", "b", "c"], artifacts.library_versions()
    )
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert sha == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_pickle_from_another_scikit_learn_is_refused(hgb):
    _, path, sha, _ = hgb
    versions = {**artifacts.library_versions(), "scikit-learn": "0.24.2"}
    with pytest.raises(ArtifactError, match="pickled by scikit-learn 0.24.2 is not loaded"):
        artifacts.load(path, sha, "hist_gradient_boosting", ["a", "b", "c"], versions)


def test_wrong_hash_is_refused_before_unpickling(hgb):
    _, path, _, _ = hgb
    with pytest.raises(ArtifactError, match="does not match its registered sha256"):
        artifacts.load(
            path, "0" * 64, "hist_gradient_boosting", ["a", "b", "c"], artifacts.library_versions()
        )


def test_calibration_maps_are_monotone_and_applied():
    platt = artifacts.Calibration("sigmoid", {"a": 2.0, "b": -1.0})
    iso = artifacts.Calibration("isotonic", {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.2, 0.9]})
    scores = np.linspace(0.01, 0.99, 50)
    for calibration in (platt, iso):
        mapped = calibration.apply(scores)
        assert (np.diff(mapped) >= 0).all() and ((mapped >= 0) & (mapped <= 1)).all()
    assert iso.apply(np.array([0.5]))[0] == pytest.approx(0.2)
    assert artifacts.Calibration.from_dict(platt.as_dict()) == platt
