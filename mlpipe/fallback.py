"""Fallback answers: `predictions.<job>_for(key)` returns one row for any key, the published one or a
fallback from the live model's training rates (this module: the rates and the rows; the table and
the function are made by mlpipe.publish).

Training stores the rates with the version (`reference -> 'fallback'`: the base rate of the training
set and, when the job names `outputs.fallback.segment`, each segment's rate). Every move of the view
copies the live model's rates into `predictions.<job>_fallback` in the same transaction, so the
function, plain SQL that the planner inlines, reads only what a reader may read.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from mlpipe.spec import JobSpec


def training_rates(spec: JobSpec, frame: pd.DataFrame, labels: np.ndarray) -> dict:
    """The training set's base rate and, when the job names a segment, each segment's rate."""
    labels = np.asarray(labels, dtype=float)
    rates: dict = {"base_rate": float(labels.mean()), "n": int(len(labels)), "segment": None, "segments": {}}
    segment = spec.outputs.fallback.segment
    if segment is None or segment not in frame:
        return rates
    values = segment_text(frame[segment], spec.features[segment].kind)
    grouped = pd.Series(labels).groupby(values.to_numpy(), dropna=True).agg(["mean", "count"])
    rates["segment"] = segment
    rates["segments"] = {
        str(k): {"rate": float(r["mean"]), "n": int(r["count"])} for k, r in grouped.iterrows()
    }
    return rates


def segment_text(values: pd.Series, kind: str) -> pd.Series:
    """A segment column as the text a caller passes: the category, or 'true'/'false'."""
    if kind != "boolean":
        return values.astype("string")
    flags = values.astype("float64")  # bool, 0/1 or NaN alike
    return pd.Series(np.where(flags.isna(), None, np.where(flags > 0, "true", "false")), index=values.index)


def answer_rows(spec: JobSpec, model_version: str, reference: dict, as_of: date) -> list[tuple]:
    """The rows of predictions.<job>_fallback for a model: (segment, score, decision, percentile,
    model_version, as_of, n); segment null is the base rate. A model trained before fallback rates
    existed answers with the mean of its test scores (a calibrated model's estimate of the base rate)."""
    scores = np.asarray(reference.get("scores") or [0.0])
    rates = reference.get("fallback")
    if rates is None:
        rates = {"base_rate": float(scores.mean()), "n": None, "segment": None, "segments": {}}
        base_name = f"{model_version}:test_mean"
    else:
        base_name = f"{model_version}:base_rate"
    threshold = spec.outputs.threshold

    def row(segment: str | None, rate: float, name: str, n: int | None) -> tuple:
        percentile = float(100.0 * np.searchsorted(scores, rate, side="right") / len(scores))
        return (segment, rate, rate >= threshold, percentile, name, as_of, n)

    rows = [row(None, rates["base_rate"], base_name, rates["n"])]
    for value, found in sorted(rates["segments"].items()):
        rows.append(row(value, found["rate"], f"{model_version}:{rates['segment']}={value}", found["n"]))
    return rows
