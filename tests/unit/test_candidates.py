"""The candidate search: which configurations are tried, and the algorithm names a spec may use."""

from __future__ import annotations

import numpy as np
import pytest

from mlpipe.algorithms import ALGORITHMS, FitInput
from mlpipe.candidates import configurations
from mlpipe.spec import Candidate

SPACE = {"max_depth": [3, 4, 6], "eta": [0.03, 0.05, 0.1]}


def _xgb(search: dict | None = None) -> Candidate:
    params = {"max_depth": 4, "eta": 0.05, "num_boost_round": 600}
    return Candidate(name="xgb", algorithm="xgboost", params=params, search=search or {})


def test_the_candidates_own_params_come_first_and_alone_without_a_search_space():
    assert configurations(_xgb(), 5, seed=7) == [_xgb().params]
    assert configurations(_xgb(SPACE), 1, seed=7) == [_xgb().params]


def test_draws_are_distinct_within_the_space_and_keep_the_params_not_searched():
    configs = configurations(_xgb(SPACE), 5, seed=7)
    assert len(configs) == 5 and configs[0] == _xgb().params
    assert len({tuple(sorted(c.items())) for c in configs}) == 5, "no configuration twice"
    for config in configs[1:]:
        assert config["num_boost_round"] == 600
        assert all(config[name] in values for name, values in SPACE.items())


def test_the_same_seed_draws_the_same_configurations():
    assert configurations(_xgb(SPACE), 5, seed=7) == configurations(_xgb(SPACE), 5, seed=7)
    assert configurations(_xgb(SPACE), 5, seed=7) != configurations(_xgb(SPACE), 5, seed=8)


def test_a_small_space_stops_when_exhausted_instead_of_repeating():
    candidate = Candidate(
        name="logreg", algorithm="logistic_regression", params={"C": 1.0}, search={"C": [0.1, 1.0]}
    )
    assert configurations(candidate, 10, seed=7) == [{"C": 1.0}, {"C": 0.1}]


def test_a_spec_names_only_algorithms_in_the_table():
    assert {Candidate(name="m", algorithm=name).algorithm for name in ALGORITHMS} == set(ALGORITHMS)
    with pytest.raises(ValueError, match="unknown algorithm 'lightgbm'; use one of logistic_regression"):
        Candidate(name="m", algorithm="lightgbm")


def _fit_input(deadline: float) -> FitInput:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.5, size=400) > 0).astype(np.float32)
    return FitInput(
        x_train=x[:300],
        y_train=y[:300],
        x_valid=x[300:],
        y_valid=y[300:],
        columns=["a", "b"],
        seed=7,
        monotone=[0, 0],
        categorical=[False, False],
        deadline=deadline,
    )


@pytest.mark.parametrize(
    ("patience", "deadline", "rounds"),
    [
        (0, float("inf"), 5),  # no early stopping asked for: every round is kept
        (40, 0.0, 1),  # the time budget ran out after the first round, before early stopping noted one
    ],
)
def test_xgboost_fits_when_early_stopping_recorded_no_best_iteration(patience, deadline, rounds):
    fit = ALGORITHMS["xgboost"].fit
    params = {"max_depth": 2, "num_boost_round": 5, "early_stopping_rounds": patience}
    model = fit(params, _fit_input(deadline))
    assert model.booster.num_boosted_rounds() == rounds
    assert model.predict_proba(_fit_input(deadline).x_valid).shape == (100,)
