"""Gates with Great Expectations: a cheap per-chunk feature check and the output gate before publish.

GX validates pandas frames. At 10M rows neither gate reads the whole output: each chunk reduces its
whole model-input matrix to a few numpy figures (missing share per input), and the output gate judges
the per-chunk summaries (counts, score range, those figures) and the score distribution against the
previous published run. A failure names the expectation and, where rows are to blame, a sample of their
keys. Non-finite scores never reach the gate: each chunk refuses them before writing (mlpipe.chunks).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import date

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from mlpipe import drift, publish, runs
from mlpipe.errors import MlpipeError, RunFailedError
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

_lock = threading.RLock()
_source = None


@dataclass(frozen=True)
class Failure:
    """One failed check: GX's expectation and result, and the same thing in the operator's words."""

    expectation: str
    detail: str
    column: str | None = None
    words: str = ""  # what, observed, allowed: "quarantine rate 1.4% (63 of 4,519) is above the job's 1.0%"

    @property
    def gx(self) -> str:
        """Great Expectations' own account (kept beside the words in mlpipe.runs.gates)."""
        return f"{self.expectation}: {self.detail}"

    def __str__(self) -> str:
        return self.words or self.gx


# What an operator does next, by the check that failed (the first failure's column decides).
_HINTS = {
    "rows_quarantined": "see the reasons with `mlpipe runs show {run_id}` or in mlpipe.quarantine, fix the "
    "source rows or raise outputs.max_quarantine_rate in the job",
    "rows_in": "the population query and the chunks disagree: check that the source did not change during "
    "the run and run it again",
    "missing_over_allowance": "check the source of that input (a join or a load that failed) and run again",
    "score_psi": "if the shift is real (new data, a new model), raise outputs.max_score_psi in the job and "
    "run again; `mlpipe runs show {run_id}` has the figures",
}
_DEFAULT_HINT = "see `mlpipe runs show {run_id}`"


class GateFailed(RunFailedError):
    """A gate found something wrong; the run stops before publish and the previous day stays live."""

    def __init__(
        self, gate: str, failures: list[Failure], sample_keys: list | None = None, run_id: int | None = None
    ) -> None:
        keys = f"; sample keys {sample_keys}" if sample_keys else ""
        first = next(
            (f.column for f in failures if f.column in _HINTS), failures[0].column if failures else ""
        )
        hint = _HINTS.get(first or "", _DEFAULT_HINT).format(run_id=run_id if run_id is not None else "N")
        super().__init__(
            f"{gate} failed: "
            + "; ".join(map(str, failures))
            + keys
            + f". The run stopped before publishing; the previous predictions stay live: {hint}."
        )
        self.gate, self.failures, self.sample_keys = gate, failures, sample_keys or []


def warm_up() -> None:
    """Import GX, build its context and run the output gate's checks once on a passing example, in
    the background while the run plans and scores: GX's first validation of each kind costs several
    times a later one (0.33 s against 0.08 s measured), and the real gate is on the run's critical path."""
    threading.Thread(target=_rehearse_gate, name="mlpipe-gx-warm-up", daemon=True).start()


def _rehearse_gate() -> None:
    chunks = pd.DataFrame(
        [{"rows_in": 1, "rows_scored": 1, "rows_quarantined": 0, "min_score": 0.5, "max_score": 0.5}]
    )
    missing = pd.DataFrame([{"chunk_no": 0, "column": "x", "missing_over_allowance": -0.1}])
    if check_output(chunks, missing, 1, 0.0, 0.0, 0.1):
        log.warning("the output gate's rehearsal failed on a passing example")


def _data_source():
    """One ephemeral GX context per process (GX takes seconds to import: only when gates run)."""
    global _source
    with _lock:
        if _source is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # GX announces its temporary docs folder at INFO on every start: not news for operators.
            # That module sets its own logger to INFO when imported (above), so set it after.
            logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            _source = context.data_sources.add_pandas("mlpipe")
        return _source


def _validate(frame: pd.DataFrame, name: str, expectations: list) -> list[Failure]:
    import great_expectations as gx

    source = _data_source()
    # GX's context is not thread-safe; chunk tasks share it, so validations take turns (each is small).
    with _lock:
        asset = next((a for a in source.assets if a.name == name), None) or source.add_dataframe_asset(name)
        definition = next((b for b in asset.batch_definitions if b.name == "frame"), None)
        definition = definition or asset.add_batch_definition_whole_dataframe("frame")
        suite = gx.ExpectationSuite(name=name, expectations=expectations)
        result = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite)
    broken = [r for r in result.results if r.exception_info and r.exception_info.get("raised_exception")]
    if broken:  # GX could not evaluate: that is not a verdict on the data
        info = broken[0].exception_info
        raise MlpipeError(f"Great Expectations could not evaluate {name}: {info.get('exception_message')}")
    return [
        Failure(
            r.expectation_config.type,
            _describe(r.result, r.expectation_config.kwargs),
            r.expectation_config.kwargs.get("column"),
        )
        for r in result.results
        if not r.success
    ]


def _describe(result: dict, kwargs: dict) -> str:
    bounds = {
        k: v
        for k, v in kwargs.items()
        if k in ("column", "min_value", "max_value", "mostly") and v is not None
    }
    if result.get("observed_value") is not None:
        return f"observed {result['observed_value']} with {bounds}"
    share = result.get("unexpected_percent") or 0.0
    return f"{result.get('unexpected_count')} unexpected rows ({share:.2f}%) with {bounds}"


def allowed_missing(reference_share: float) -> float:
    """How much of an input may be missing in a chunk: twice its training share, or 10 points more."""
    return min(1.0, max(2 * reference_share, reference_share + 0.1))


def missing_report(matrix: np.ndarray, keys: np.ndarray, columns: list[str], reference: dict) -> dict:
    """Per-chunk feature check, numpy only (cheap at any size): each input's missing share, with a
    few keys of the missing rows when the share is over its allowance. GX judges these at the gate."""
    shares = np.isnan(matrix).mean(axis=0) if len(matrix) else np.zeros(len(columns))
    report = {}
    for i, name in enumerate(columns):
        if name not in reference:
            continue
        share = float(shares[i])
        entry = {"share": share, "allowed": allowed_missing(reference[name]["missing_share"])}
        if share > entry["allowed"]:
            entry["sample_keys"] = keys[np.isnan(matrix[:, i])][:5].tolist()
        report[name] = entry
    return report


def population_stability(current: list[int], previous: list[int]) -> float:
    """PSI between two score histograms over the same bins (0: same shape; > 0.25: a large shift)."""
    p = (np.asarray(current, dtype=float) + 0.5) / (np.sum(current) + 0.5 * len(current))
    q = (np.asarray(previous, dtype=float) + 0.5) / (np.sum(previous) + 0.5 * len(previous))
    return float(np.sum((p - q) * np.log(p / q)))


def check_output(
    chunks: pd.DataFrame,
    missing: pd.DataFrame,
    population: int,
    max_quarantine_rate: float,
    psi: float | None,
    max_psi: float,
) -> list[Failure]:
    """The output gate on per-chunk summaries: complete, quarantine within bounds, scores in [0, 1],
    no input missing far more often than in training in any chunk, and the score
    distribution close enough to the previous published run."""
    import great_expectations as gx

    rows_in = int(chunks["rows_in"].sum())
    quarantined = int(chunks["rows_quarantined"].sum())
    expectations = [
        gx.expectations.ExpectColumnSumToBeBetween(column="rows_in", min_value=population),
        gx.expectations.ExpectColumnSumToBeBetween(column="rows_scored", min_value=population - quarantined),
        gx.expectations.ExpectColumnSumToBeBetween(
            column="rows_quarantined", max_value=max_quarantine_rate * rows_in
        ),
    ]
    scored = chunks[chunks["rows_scored"] > 0]
    if len(scored):
        expectations += [
            gx.expectations.ExpectColumnMinToBeBetween(column="min_score", min_value=0.0),
            gx.expectations.ExpectColumnMaxToBeBetween(column="max_score", max_value=1.0),
        ]
    failures = _validate(chunks, "output_chunks", expectations)
    if len(missing):
        failures += _validate(
            missing,
            "chunk_features",
            [gx.expectations.ExpectColumnValuesToBeBetween(column="missing_over_allowance", max_value=0.0)],
        )
    if psi is not None:
        failures += _validate(
            pd.DataFrame({"score_psi": [psi]}),
            "output_distribution",
            [gx.expectations.ExpectColumnValuesToBeBetween(column="score_psi", max_value=max_psi)],
        )
    facts = {
        "population": population,
        "rows_in": rows_in,
        "rows_scored": int(chunks["rows_scored"].sum()),
        "quarantined": quarantined,
        "max_quarantine_rate": max_quarantine_rate,
        "min_score": float(scored["min_score"].min()) if len(scored) else None,
        "max_score": float(scored["max_score"].max()) if len(scored) else None,
        "psi": psi,
        "max_psi": max_psi,
    }
    return [replace(f, words=in_words(f, facts, missing)) for f in failures]


def in_words(failure: Failure, facts: dict, missing: pd.DataFrame) -> str:
    """A failed check restated as what, observed and allowed, in the job's terms."""
    column, f = failure.column, facts
    if column == "rows_quarantined":
        rate = f["quarantined"] / f["rows_in"] if f["rows_in"] else 0.0
        return (
            f"quarantine rate {rate:.1%} ({f['quarantined']:,} of {f['rows_in']:,}) is above the job's "
            f"{f['max_quarantine_rate']:.1%}"
        )
    if column == "rows_in":
        return (
            f"rows read {f['rows_in']:,} are fewer than the population {f['population']:,} "
            f"({f['population'] - f['rows_in']:,} never reached a chunk)"
        )
    if column == "rows_scored":
        return (
            f"rows scored {f['rows_scored']:,} plus quarantined {f['quarantined']:,} are fewer than the "
            f"population {f['population']:,}"
        )
    if column == "min_score":
        return f"lowest score {f['min_score']:.4g} is below 0 (scores must be probabilities)"
    if column == "max_score":
        return f"highest score {f['max_score']:.4g} is above 1 (scores must be probabilities)"
    if column == "score_psi":
        return (
            f"score distribution shift (PSI) {f['psi']:.3f} against the previous published day is above "
            f"the job's {f['max_psi']:g}"
        )
    if column == "missing_over_allowance" and len(missing):
        worst = missing.sort_values("missing_over_allowance", ascending=False).iloc[0]
        if "share" in missing.columns:
            return (
                f"input {worst['column']} is missing in {worst['share']:.1%} of chunk {worst['chunk_no']}'s "
                f"rows, above its allowance of {worst['allowed']:.1%} (twice its training share, or 10 "
                "points more)"
            )
        return (
            f"input {worst['column']} is missing in chunk {worst['chunk_no']} "
            f"{worst['missing_over_allowance']:.1%} more often than its allowance"
        )
    return failure.gx


@dataclass(frozen=True)
class RunOutput:
    """What the output gate judges: plain data the scoring run hands over."""

    spec: JobSpec
    as_of: date
    run_id: int
    table: str  # the run's table in the data schema
    population: int
    chunks: list  # ChunkResult-like: rows_in, rows_scored, rows_quarantined, min/max_score, missing
    histogram: list[int]
    inputs: dict  # the run's counts in the model's drift reference bins
    reference: dict | None  # the model's drift reference bins (None: trained before they existed)
    # False for a top-up: a few new entities are not the day's distribution (no PSI, drift or
    # missing-share gate; counts, range and the quarantine rate still hold).
    whole_day: bool = True


def output_gate(conn: psycopg.Connection, out: RunOutput) -> dict:
    """Judge a run's output before publish, record the outcome on the run, and raise GateFailed
    (naming a few offending keys) if anything is wrong. Returns the recorded gate results."""
    chunks = pd.DataFrame(
        [
            {
                "rows_in": r.rows_in,
                "rows_scored": r.rows_scored,
                "rows_quarantined": r.rows_quarantined,
                "min_score": r.min_score,
                "max_score": r.max_score,
            }
            for r in out.chunks
        ],
        columns=["rows_in", "rows_scored", "rows_quarantined", "min_score", "max_score"],
    )
    previous = out.whole_day and runs.previous_score_histogram(conn, out.spec.name, out.as_of, out.run_id)
    psi = population_stability(out.histogram, previous) if previous else None
    # A top-up's new entities have no history yet: their inputs are missing far more often than the
    # population's in training, rightly; the row checks (quarantine) still apply to them.
    missing = _missing_frame(out.chunks if out.whole_day else [])
    outputs = out.spec.outputs
    failures = check_output(
        chunks, missing, out.population, outputs.max_quarantine_rate, psi, outputs.max_score_psi
    )
    if out.spec.monitoring.block_publish_on_drift and out.whole_day:
        failures += drift_failures(out)
    gates = {
        "passed": not failures,
        "failures": [str(f) for f in failures],  # in the operator's words
        "gx": [f.gx for f in failures],  # Great Expectations' result, same order
        "score_psi": psi,
        "unknown_categories": unknown_categories(out),
    }
    if gates["unknown_categories"]:
        log.warning(
            "run %s: categories the model never saw, scored as none of its known ones: %s",
            out.run_id,
            ", ".join(f"{name} {count:,} rows" for name, count in gates["unknown_categories"].items()),
        )
    runs.record_gates(conn, out.run_id, gates)
    if failures:
        raise GateFailed(
            f"the output gate of run {out.run_id} ({out.spec.name} {out.as_of})",
            failures,
            _offending_keys(conn, out, failures, missing),
            out.run_id,
        )
    return gates


def unknown_categories(out: RunOutput) -> dict[str, int]:
    """Rows per categorical input whose category the model never saw: scored as none of the known
    ones where the spec says `unknown: ignore` (where it says reject, such rows are quarantined)."""
    if not out.reference:
        return {}
    return {
        name: int(counts[drift.UNKNOWN])
        for name, counts in out.inputs.items()
        if out.reference.get(name, {}).get("kind") == "categorical" and counts[drift.UNKNOWN]
    }


def drift_failures(out: RunOutput) -> list[Failure]:
    """Inputs (or the score) whose PSI against training reaches the job's fail threshold."""
    if not out.reference:
        log.warning("%s: the model has no drift reference; retrain to gate publish on drift", out.spec.name)
        return []
    fail = out.spec.monitoring.drift.fail
    found = {name: drift.psi(counts, out.reference[name]["counts"]) for name, counts in out.inputs.items()}
    return [
        Failure(
            "drift",
            f"PSI of {name} against training is {value:.3f}, at or above {fail:g}",
            name,
            f"input {name} drifted from training: PSI {value:.3f} is at or above the job's {fail:g}",
        )
        for name, value in sorted(found.items(), key=lambda item: -item[1])
        if value >= fail
    ]


def _missing_frame(chunks: list) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "chunk_no": r.chunk_no,
                "column": name,
                "missing_over_allowance": m["share"] - m["allowed"],
                "sample_keys": m.get("sample_keys", []),
                "share": m["share"],
                "allowed": m["allowed"],
            }
            for r in chunks
            for name, m in (r.missing or {}).items()
        ],
        columns=["chunk_no", "column", "missing_over_allowance", "sample_keys", "share", "allowed"],
    )


def _offending_keys(conn: psycopg.Connection, out: RunOutput, failures: list, missing: pd.DataFrame) -> list:
    """Where an operator should look first: the worst chunk's keys, quarantined keys, or unscored ones."""
    columns = {f.column for f in failures}
    if "missing_over_allowance" in columns:
        worst = missing.sort_values("missing_over_allowance", ascending=False).iloc[0]
        return [f"{worst['column']} missing in chunk {worst['chunk_no']}", *worst["sample_keys"]]
    if "rows_quarantined" in columns:
        return runs.quarantined_keys(conn, out.run_id)
    if "rows_in" in columns or "rows_scored" in columns:
        query = sql.SQL(
            "select p.{key} from ({population}) as p where not exists "
            "(select from {table} t where t.entity_id = p.{key}) order by 1 limit 5"
        ).format(
            key=sql.Identifier(out.spec.entity.key),
            population=sql.SQL(out.spec.sql("population")),
            table=sql.Identifier(publish.DATA_SCHEMA, out.table),
        )
        return [r[0] for r in conn.execute(query, {"as_of": out.as_of})]
    return []
