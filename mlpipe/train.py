"""Monthly training: stacked point-in-time training set, candidates, evaluation, registration."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg

import mlpipe
from mlpipe import artifacts, behaviour, drift, explain, fallback, registry, runs
from mlpipe.candidates import calibrate, platt, search
from mlpipe.evaluate import decide_promotion, probability_metrics, ranking_metrics
from mlpipe.features import baseline_values, matrix_columns
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec
from mlpipe.trainingset import TrainingSet, build_training_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model: ModelVersion
    promoted: bool
    decision: dict
    metrics: dict
    run_id: int


def score_reference(scores: np.ndarray) -> list[float]:
    """1001 quantiles of the test scores: the scale published percentiles are read against."""
    return np.quantile(scores, np.linspace(0, 1, 1001)).tolist()


def feature_reference(data: TrainingSet, columns: list[str]) -> dict:
    """Each input column's missing share on the train split: the chunk check's yardstick."""
    x_train, _ = data.part("train")
    missing = np.isnan(x_train).mean(axis=0) if len(x_train) else np.ones(len(columns))
    # A column never present in training has no yardstick: the chunk check skips it.
    return {name: {"missing_share": float(missing[i])} for i, name in enumerate(columns) if missing[i] < 1}


def reference_histograms(spec: JobSpec, data: TrainingSet, columns: list[str], test_scores) -> dict:
    """Drift reference bins of every input and of the score, from the test split: for a history job
    the newest matured cutoff, so that slow trends over the training window are not flagged as drift."""
    test_rows = data.split == "test"
    return drift.references(spec, data.frame[test_rows], data.matrix[test_rows], columns, test_scores)


def _recalibration(test_scores: np.ndarray, test_labels: np.ndarray) -> dict | None:
    """The Platt map of the test scores to the test outcomes, the monitor's reading of scores."""
    return platt(test_scores, test_labels).as_dict() if len(np.unique(test_labels)) == 2 else None


def train(
    conn: psycopg.Connection,
    settings: Settings,
    spec: JobSpec,
    as_of: date,
    flow_run_id: str | None = None,
) -> TrainResult:
    """Build the training set, fit and evaluate every candidate, register the best, promote by rule.

    One training of a job at a time (an advisory lock held on `conn`); a training run that died
    without finishing is marked abandoned when the next one starts, and any exit of this one
    (an error, Ctrl-C, SIGTERM) marks it failed. The Prefect flow run that carries it, if any, is
    recorded when it starts, so a failed run links to its flow run too."""
    started = time.monotonic()
    deadline = started + spec.training.time_budget_s
    run_id = runs.start_exclusive(conn, "train", spec.name, as_of)
    runs.record_flow_run(conn, run_id, flow_run_id)
    conn.commit()
    try:
        result = _train(conn, settings, spec, as_of, run_id, deadline)
    except BaseException as exc:
        _mark_failed(conn, run_id, exc)
        raise
    runs.succeed(conn, run_id, result.model.model_id, {"total_s": round(time.monotonic() - started, 3)})
    conn.commit()
    return result


def _mark_failed(conn: psycopg.Connection, run_id: int, exc: BaseException) -> None:
    try:
        conn.rollback()
        runs.fail(conn, run_id, exc)
        conn.commit()
    except psycopg.OperationalError as db_down:  # left running: the next training abandons it
        log.warning("could not mark training run %s failed: %s", run_id, db_down)


def _train(conn, settings: Settings, spec: JobSpec, as_of: date, run_id: int, deadline: float) -> TrainResult:
    data = build_training_set(conn, spec, as_of, settings.chunk_rows)
    columns = matrix_columns(spec)
    x_test, y_test = data.part("test")
    baseline = ranking_metrics(y_test, baseline_values(x_test, spec))
    models, candidates = _fit_candidates(spec, data, columns, deadline)
    best, eligible = _choose(spec, candidates)
    model, calibration_report = models[best], {"chosen": "none", "reason": "calibration: none in the spec"}
    if spec.model.calibration == "auto":
        model, calibration_report = calibrate(model, data, spec.training.seed)
    test = probability_metrics(y_test, model.predict_proba(x_test))

    current = registry.champion(conn, spec.name)
    champion_test = None
    if current is not None and current.feature_schema.get("columns") == columns:
        champion_test = probability_metrics(y_test, current.load().predict_proba(x_test))
    decision = decide_promotion(spec, test, baseline, champion_test)
    if current is not None and champion_test is None:
        decision["reasons"].append(f"champion {current.model_version} uses other features: not comparable")
    checks = candidates[best]["behaviour"]["checks"]
    if eligible:
        decision["reasons"].append(
            "behaviour checks passed: " + ", ".join(c["check"] for c in checks)
            if checks
            else "behaviour checks: none set in the job (model.behaviour)"
        )
    else:
        decision["decision"] = "keep_challenger"
        decision["reasons"].append("no candidate passed the behaviour checks")
    metrics = {
        "test": test,
        "baseline": baseline,
        "champion": champion_test,
        "candidates": candidates,
        "chosen": best,
        "calibration": calibration_report,
    }
    registered = _register(conn, settings, spec, as_of, model, data, metrics, decision)
    promoted = decision["decision"] == "promote"
    reason = f"training run {run_id}: " + "; ".join(decision["reasons"])
    registry.set_alias(conn, spec.name, "champion" if promoted else "challenger", registered.model_id, reason)
    conn.commit()
    log.info(
        "job %s: registered %s (%s): %s", spec.name, registered.model_version, best, decision["decision"]
    )
    return TrainResult(model=registered, promoted=promoted, decision=decision, metrics=metrics, run_id=run_id)


def _fit_candidates(
    spec: JobSpec, data: TrainingSet, columns: list[str], deadline: float
) -> tuple[dict, dict]:
    """Search each candidate in an equal share of the remaining budget; evaluate and check it."""
    x_test, y_test = data.part("test")
    test_frame = data.frame[data.split == "test"]
    models, report = {}, {}
    for position, candidate in enumerate(spec.model.candidates):
        share = (deadline - time.monotonic()) / (len(spec.model.candidates) - position)
        found = search(candidate, spec, data, columns, time.monotonic() + max(share, 0.0))
        models[candidate.name] = found.model
        report[candidate.name] = {
            "algorithm": candidate.algorithm,
            "params": found.params,
            "search": found.tried,
            "validation": found.validation,
            "test": probability_metrics(y_test, found.model.predict_proba(x_test)),
            "behaviour": behaviour.check(found.model, test_frame, spec, spec.training.seed),
        }
    return models, report


def _choose(spec: JobSpec, candidates: dict) -> tuple[str, list[str]]:
    """The best candidate on validation among those that pass their behaviour checks."""
    required = spec.model.promotion.require_behaviour
    eligible = [name for name, c in candidates.items() if c["behaviour"]["passed"] or not required]
    metric = spec.model.metric
    return max(eligible or candidates, key=lambda name: candidates[name]["validation"][metric]), eligible


def _register(
    conn,
    settings: Settings,
    spec: JobSpec,
    as_of: date,
    model: artifacts.ScoringModel,
    data: TrainingSet,
    metrics: dict,
    decision: dict,
) -> ModelVersion:
    """Save the artifact and write its registry row with everything needed to trace a score back."""
    version = registry.next_version(conn, spec.name)
    uri, sha256 = artifacts.save(model, settings.artifact_store / spec.name)
    columns = matrix_columns(spec)
    x_test, _ = data.part("test")
    test_scores = model.predict_proba(x_test)
    chosen = metrics["candidates"][metrics["chosen"]]
    return registry.register(
        conn,
        spec,
        version,
        {
            "algorithm": model.algorithm,
            "trained_as_of": as_of,
            "artifact_uri": uri,
            "artifact_sha256": sha256,
            "metrics": metrics,
            "params": {"chosen": chosen["params"], "spec": {c.name: c.params for c in spec.model.candidates}},
            "feature_schema": {
                "columns": columns,
                "features": spec.model_dump(mode="json")["features"],
                "derived": list(spec.derived),
            },
            "training_window": data.window,
            "row_counts": data.counts,
            "reference": {
                "scores": score_reference(test_scores),
                "features": feature_reference(data, columns),
                "histograms": reference_histograms(spec, data, columns, test_scores),
                # How the monitor reads scores when it estimates performance before outcomes mature.
                "recalibration": _recalibration(test_scores, data.part("test")[1]),
                # What predictions.<job>_for answers for an entity not scored yet.
                "fallback": fallback.training_rates(spec, data.frame, data.labels),
                "explainer": explain.fit_for(
                    model.predict_proba,
                    data.part("train")[0],
                    data.part("validation")[0],
                    columns,
                    spec.training.seed,
                ),
            },
            "library_versions": {**artifacts.library_versions(), "python": platform.python_version()},
            "code_version": f"mlpipe {mlpipe.__version__}",
            "promotion": decision,
            "calibration": model.calibration.as_dict()
            if isinstance(model, artifacts.CalibratedModel)
            else None,
            "behaviour": chosen["behaviour"],
        },
    )
