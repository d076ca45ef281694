"""Rollout without a database: the spec's steps, nested arms, non-inferiority and the step's verdict."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlpipe.chunks import challenger_arm
from mlpipe.errors import SpecError
from mlpipe.rollout_judge import FAIL, PASS, WAIT, judge, non_inferiority, pooled_auc
from mlpipe.settings import Settings
from mlpipe.spec import Rollout, load_job

CHURN = Path(__file__).parents[2] / "jobs" / "churn"


def _job_with_rollout(tmp_path: Path, rollout: dict) -> Path:
    folder = tmp_path / "churn"
    shutil.copytree(CHURN, folder)
    spec = yaml.safe_load((folder / "job.yaml").read_text())
    spec["outputs"]["rollout"] = rollout
    (folder / "job.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "job.yaml"


def test_a_declared_rollout_is_read_with_its_defaults(tmp_path):
    spec = load_job(_job_with_rollout(tmp_path, {"steps": [0.1, 0.5, 1.0], "bake_days": 2}), Settings())
    assert spec.outputs.rollout.steps == [0.1, 0.5, 1.0]
    assert spec.outputs.rollout.bake_days == 2
    assert spec.outputs.rollout.guard.max_quarantine_rate == 0.01
    assert load_job(CHURN, Settings()).outputs.rollout is None


@pytest.mark.parametrize(
    ("steps", "says"),
    [
        ([0.25, 0.05, 1.0], "must increase strictly"),
        ([0.05, 0.05, 1.0], "must increase strictly"),
        ([0.0, 0.5, 1.0], "0.0 is outside (0, 1]"),
        ([0.05, 0.5, 1.5], "1.5 is outside (0, 1]"),
        ([-0.1, 0.5], "-0.1 is outside (0, 1]"),
        ([1.0], "start at 100%"),
        ([], "at least 1 item"),
    ],
)
def test_bad_steps_are_one_line_naming_the_file(tmp_path, steps, says):
    path = _job_with_rollout(tmp_path, {"steps": steps})
    with pytest.raises(SpecError) as caught:
        load_job(path, Settings())
    message = str(caught.value)
    assert says in message and str(path) in message and "outputs.rollout.steps" in message
    assert "\n" not in message


def test_challenger_arms_nest_as_the_share_grows():
    rng = np.random.default_rng(3)
    for keys in (rng.choice(10**9, 20_000, replace=False), np.array([f"c-{k}" for k in range(20_000)])):
        previous = np.zeros(len(keys), dtype=bool)
        for share in (0.05, 0.25, 0.5, 0.8, 1.0):
            arm = challenger_arm(keys, share)
            assert not (previous & ~arm).any(), f"an entity left the challenger at share {share}"
            assert abs(arm.mean() - share) < 0.015
            previous = arm
        assert previous.all()


def test_challenger_arms_are_the_same_in_another_process():
    keys = np.arange(1, 5001)
    here = np.flatnonzero(challenger_arm(keys, 0.25)).tolist()
    code = (
        "import numpy as np; from mlpipe.chunks import challenger_arm; "
        "print(np.flatnonzero(challenger_arm(np.arange(1, 5001), 0.25)).tolist())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(there) == here  # noqa: S307 (a list of ints printed by our own child process)


def _day(auc: float, n: int, positives: int) -> dict:
    return {"roc_auc": auc, "n": n, "positives": positives}


def test_non_inferiority_needs_the_interval_not_only_the_point_estimate():
    many = [_day(0.80, 20_000, 2_000)]
    assert non_inferiority(many, [_day(0.80, 20_000, 2_000)], 0.02)["passed"]
    assert not non_inferiority(many, [_day(0.70, 20_000, 2_000)], 0.02)["passed"]
    few = non_inferiority([_day(0.80, 200, 20)], [_day(0.80, 200, 20)], 0.02)
    assert few["difference"] == 0 and few["lower"] < -0.02 and not few["passed"], "too few outcomes to tell"


def test_more_days_of_the_same_entities_do_not_narrow_the_interval():
    one = pooled_auc([_day(0.8, 2_000, 200)])
    ten = pooled_auc([_day(0.8, 2_000, 200)] * 10)
    assert ten == pytest.approx(one)


def _days(count: int, population: int = 1000, quarantined: int = 0) -> list[dict]:
    first = date(2026, 1, 1)
    return [
        {"as_of": first + timedelta(days=i), "run_id": i, "population": population}
        | {"rows_quarantined": quarantined}
        for i in range(count)
    ]


def _arms(days: list[dict], champion: float, challenger: float, n: int, estimated=(0.8, 0.8)) -> list[dict]:
    return [
        {
            "as_of": d["as_of"],
            "arm": arm,
            "matured": True,
            "n": n,
            "positives": n // 10,
            "roc_auc": auc,
            "estimated": est,
        }
        for d in days
        for arm, auc, est in (("champion", champion, estimated[0]), ("challenger", challenger, estimated[1]))
    ]


PLAN = Rollout(steps=[0.2, 0.5, 1.0], bake_days=2, min_matured_outcomes=5_000, max_metric_loss=0.02)


def test_a_step_waits_for_its_bake_days_and_its_outcomes_then_passes():
    assert judge(PLAN, _days(1), _arms(_days(1), 0.8, 0.8, 50_000), None).verdict == WAIT
    short = judge(PLAN, _days(2), _arms(_days(2), 0.8, 0.8, 1_000), None)
    assert short.verdict == WAIT and "of 5000 matured outcomes" in short.reasons[0]
    passed = judge(PLAN, _days(2), _arms(_days(2), 0.8, 0.81, 50_000), 0.01)
    assert passed.verdict == PASS and passed.figures["roc_auc"]["lower"] > -0.02


def test_a_worse_challenger_fails_once_judged():
    check = judge(PLAN, _days(2), _arms(_days(2), 0.8, 0.7, 50_000), None)
    assert check.verdict == FAIL and "lower bound of the difference" in check.reasons[0]


@pytest.mark.parametrize(
    ("days", "estimated", "psi", "says"),
    [
        (_days(1), (0.8, 0.7), None, "estimated roc_auc loss 0.100 > 0.05"),
        (_days(1), (0.8, 0.8), 0.4, "challenger score PSI 0.400 > 0.25"),
        (_days(1, quarantined=50), (0.8, 0.8), None, "quarantine rate 5.00% > 1.00%"),
    ],
)
def test_a_leading_signal_rolls_back_at_once_before_outcomes(days, estimated, psi, says):
    arms = [dict(a, matured=False, roc_auc=None) for a in _arms(days, 0.8, 0.8, 100, estimated)]
    check = judge(PLAN, days, arms, psi)
    assert check.verdict == FAIL and check.reasons == [says]
