"""Behaviour checks every candidate must pass before it can be promoted.

- invariance: flipping (booleans) or shuffling (numbers) a feature the spec calls irrelevant moves
  the 99th percentile of score changes no more than its tolerance;
- direction: raising a feature the spec calls monotone never moves the score the other way.
Checks perturb the raw rows and re-run the whole featurization, so derived features follow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpipe.artifacts import ScoringModel
from mlpipe.features import to_matrix
from mlpipe.spec import JobSpec

SAMPLE_ROWS = 5000
TOLERANCE = 1e-9  # float noise, not a real move


def check(model: ScoringModel, frame: pd.DataFrame, spec: JobSpec, seed: int) -> dict:
    """Run every check on (a seeded sample of) raw rows; returns {"passed", "checks": [...]}."""
    rng = np.random.default_rng(seed)
    rows = frame.sample(n=min(SAMPLE_ROWS, len(frame)), random_state=seed) if len(frame) else frame
    base = model.predict_proba(to_matrix(rows, spec))
    checks = []
    for name, tolerance in spec.model.behaviour.invariant.items():
        changed = rows.copy()
        if spec.features[name].kind == "boolean":
            changed[name] = rows[name].map({True: False, False: True})
        else:
            changed[name] = rng.permutation(rows[name].to_numpy())
        moved = np.abs(model.predict_proba(to_matrix(changed, spec)) - base)
        p99 = float(np.quantile(moved, 0.99)) if len(moved) else 0.0
        checks.append(
            {
                "check": f"invariant {name}",
                "passed": p99 <= tolerance,
                "detail": f"99th percentile change {p99:.4f} (allowed {tolerance})",
            }
        )
    step = spec.model.behaviour.direction_step
    for name, feature in spec.features.items():
        if not feature.monotone:
            continue
        sign = 1 if feature.monotone == "increasing" else -1
        raised = rows.copy()
        values = rows[name].to_numpy(dtype=float, na_value=np.nan) + step
        raised[name] = np.minimum(values, feature.max) if feature.max is not None else values
        delta = (model.predict_proba(to_matrix(raised, spec)) - base) * sign
        wrong = int((delta < -TOLERANCE).sum())
        checks.append(
            {
                "check": f"{feature.monotone} {name}",
                "passed": wrong == 0,
                "detail": f"{wrong} of {len(rows)} rows moved the wrong way when {name} rose by {step:g}",
            }
        )
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
