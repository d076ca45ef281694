"""The training set: features as of past cutoffs (read with the scoring code), their labels, a split."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import psycopg

from mlpipe.errors import SourceError
from mlpipe.extract import check_features_source, plan_chunks, read_features, read_labels
from mlpipe.features import find_bad_rows, to_matrix
from mlpipe.spec import JobSpec

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
        """(matrix, labels) of one split: "train", "validation" or "test"."""
        mask = self.split == name
        return self.matrix[mask], self.labels[mask]


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
    check_features_source(conn, spec, cutoffs[0])  # a column of the wrong type: named before any COPY
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
            f"job {spec.name}: the training set as of {as_of} has {len(frame)} labeled rows but needs "
            f"rows of both labels (0 and 1); check {spec.sources.labels} or train as of a later day"
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
    from sklearn.model_selection import train_test_split  # only snapshot jobs split this way

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
