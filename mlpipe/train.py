"""Monthly training: stacked point-in-time training set, candidates, evaluation, registration."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import psycopg
from sklearn.model_selection import train_test_split

import mlpipe
from mlpipe import artifacts, behaviour, explain, registry, runs
from mlpipe.candidates import calibrate, search
from mlpipe.errors import RunLockedError, SourceError
from mlpipe.evaluate import decide_promotion, probability_metrics, ranking_metrics
from mlpipe.extract import plan_chunks, read_features, read_labels
from mlpipe.features import baseline_values, find_bad_rows, matrix_columns, to_matrix
from mlpipe.registry import ModelVersion
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class TrainingSet:
    """Checked, labeled rows with their split; `matrix` rows align with `frame` rows."""

    frame: pd.DataFrame
    matrix: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    window: dict
    counts: dict

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == name
        return self.matrix[mask], self.labels[mask]


@dataclass(frozen=True)
class TrainResult:
    model: ModelVersion
    promoted: bool
    decision: dict
    metrics: dict
    run_id: int


def cutoffs_for(spec: JobSpec, as_of: date) -> list[date]:
    """Past cutoffs whose label window has fully matured by as_of, oldest first."""
    newest = as_of - timedelta(days=spec.training.horizon_days)
    step = timedelta(days=spec.training.cutoff_every_days)
    return sorted(newest - k * step for k in range(spec.training.cutoffs))


def build_training_set(conn: psycopg.Connection, spec: JobSpec, as_of: date, chunk_rows: int) -> TrainingSet:
    """Features as of each cutoff (with the scoring code) joined to the labels that followed it.

    History jobs split by time: older cutoffs train, the next validates, the newest is the
    out-of-time test. Snapshot jobs use one seeded, stratified split."""
    cutoffs = cutoffs_for(spec, as_of) if spec.history else [as_of]
    frames, counts = [], {"feature_rows": 0, "quarantined": 0, "unlabeled": 0}
    for cutoff in cutoffs:
        _, chunks = plan_chunks(conn, spec, cutoff, chunk_rows)
        raw = pd.concat([read_features(conn, spec, cutoff, chunk) for chunk in chunks], ignore_index=True)
        bad = find_bad_rows(raw, spec).notna()
        labels = read_labels(conn, spec, cutoff)
        rows = raw[~bad.to_numpy()].merge(labels, on=spec.entity.key, how="left")
        unlabeled = rows["label"].isna()
        counts["feature_rows"] += len(raw)
        counts["quarantined"] += int(bad.sum())
        counts["unlabeled"] += int(unlabeled.sum())
        frames.append(rows[~unlabeled].assign(cutoff=cutoff))
    # SQL returns rows in no particular order (and chunking changes it): sort, so that the same data
    # always gives the same training set, split and artifact.
    frame = pd.concat(frames, ignore_index=True).sort_values(["cutoff", spec.entity.key], kind="stable")
    frame = frame.reset_index(drop=True)
    if frame.empty or frame["label"].nunique() < 2:
        raise SourceError(
            f"job {spec.name}: the training set as of {as_of} has {len(frame)} labeled rows, not rows of "
            "both labels; check the labels SQL and the cutoffs (training.cutoffs, horizon_days)"
        )
    labels = frame["label"].to_numpy(dtype=np.int64)
    if spec.history:
        split = np.where(frame["cutoff"] == cutoffs[-1], "test", "train")
        split = np.where(frame["cutoff"] == cutoffs[-2], "validation", split)
        window = {
            "kind": "time",
            "cutoffs": [c.isoformat() for c in cutoffs],
            "horizon_days": spec.training.horizon_days,
            "train": [c.isoformat() for c in cutoffs[:-2]],
            "validation": cutoffs[-2].isoformat(),
            "test": cutoffs[-1].isoformat(),
        }
    else:
        split = _stratified_split(labels, spec)
        window = {
            "kind": "stratified",
            "seed": spec.training.seed,
            "as_of": as_of.isoformat(),
            "validation_share": spec.training.validation_share,
            "test_share": spec.training.test_share,
        }
    counts.update({name: int((split == name).sum()) for name in SPLITS})
    return TrainingSet(frame, to_matrix(frame, spec), labels, split, window, counts)


def _stratified_split(labels: np.ndarray, spec: JobSpec) -> np.ndarray:
    index = np.arange(len(labels))
    rest, test = train_test_split(
        index, test_size=spec.training.test_share, stratify=labels, random_state=spec.training.seed
    )
    share = spec.training.validation_share / (1 - spec.training.test_share)
    train, validation = train_test_split(
        rest, test_size=share, stratify=labels[rest], random_state=spec.training.seed
    )
    split = np.empty(len(labels), dtype=object)
    split[train], split[validation], split[test] = "train", "validation", "test"
    return split.astype(str)


def score_reference(scores: np.ndarray) -> list[float]:
    """1001 quantiles of the test scores: the scale published percentiles are read against."""
    return np.quantile(scores, np.linspace(0, 1, 1001)).tolist()


def feature_reference(data: TrainingSet, columns: list[str]) -> dict:
    """Decile edges and shares of each input column on the train split, for later drift checks."""
    x_train, _ = data.part("train")
    reference = {}
    for i, name in enumerate(columns):
        values = x_train[:, i][~np.isnan(x_train[:, i])]
        if len(values) == 0:
            continue
        edges = np.unique(np.quantile(values, np.linspace(0, 1, 11)))
        reference[name] = {
            "edges": edges.tolist(),
            "missing_share": float(np.isnan(x_train[:, i]).mean()),
        }
    return reference


def train(conn: psycopg.Connection, settings: Settings, spec: JobSpec, as_of: date) -> TrainResult:
    """Build the training set, fit and evaluate every candidate, register the best, promote by rule.

    One training of a job at a time (an advisory lock held on `conn`); a training run that died
    without finishing is marked abandoned when the next one starts, and any exit of this one
    (an error, Ctrl-C, SIGTERM) marks it failed."""
    started = time.monotonic()
    deadline = started + spec.training.time_budget_s
    if not runs.try_lock(conn, "train", spec.name):
        raise RunLockedError(
            f"{runs.lock_holder(conn, 'train', spec.name)} is already training {spec.name}; "
            "wait for it to finish (`mlpipe runs`) and run again"
        )
    for dead in runs.crashed(conn, "train", spec.name):
        runs.abandon(conn, dead.run_id)
        log.warning("training run %s of %s died without finishing; marked abandoned", dead.run_id, spec.name)
    run_id = runs.start(conn, "train", spec.name, as_of)
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
    test = probability_metrics(y_test, model.predict(x_test))

    current = registry.champion(conn, spec.name)
    champion_test = None
    if current is not None and current.feature_schema.get("columns") == columns:
        champion_test = probability_metrics(y_test, current.load().predict(x_test))
    decision = decide_promotion(spec, test, baseline, champion_test)
    if current is not None and champion_test is None:
        decision["reasons"].append(f"champion {current.model_version} uses other features: not comparable")
    checks = candidates[best]["behaviour"]["checks"]
    if eligible:
        decision["reasons"].append(
            "behaviour checks passed: " + (", ".join(c["check"] for c in checks) or "none")
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
            "test": probability_metrics(y_test, found.model.predict(x_test)),
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
    suffix = {"xgboost": "ubj", "logistic_regression": "json", "hist_gradient_boosting": "pkl"}[
        model.algorithm
    ]
    uri, sha256 = artifacts.save(
        model, settings.artifact_store / spec.name, f"{spec.name}-v{version}.{suffix}"
    )
    columns = matrix_columns(spec)
    x_test, _ = data.part("test")
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
                "scores": score_reference(model.predict(x_test)),
                "features": feature_reference(data, columns),
                "explainer": explain.fit_for(
                    model.predict,
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
