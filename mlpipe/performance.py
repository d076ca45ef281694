"""Realized and estimated performance of one published day, computed where the data lives.

PostgreSQL joins the day's history partition to its outcomes and returns (model version, score bin)
aggregates: at most SCORE_BINS rows per model version whatever the day's size, so nothing like a day
of rows ever reaches Python. With 10,000 equal score bins, AUC differs from the exact figure only by
pairs whose scores fall in the same bin (counted as ties): measured at most 5e-6 on 2M scores of
skewed and sharp distributions (0.001 allowed). Not finer: the grouping is most of the query's work
and it slows down once its groups outgrow the processor's cache (100,000 bins took twice as long).

Scoring runs without a challenger or shadow arm also count each chunk's scores into the same bins as
PostgreSQL would (`count_bins`, in the chunk's run_chunks.summary); `stored_bins` sums them, so a day
not matured yet reads nothing of its history partition, and a matured one only joins it to outcomes.

Estimated performance (confidence-based, as NannyML's CBPE) reads the same bins without outcomes:
a calibrated score s is an expected s positives and 1 - s negatives, so the expected AUC and positive
rate follow from the scores alone. It cannot see a change in the relationship between inputs and
outcome (the scores look as confident as ever), only changes in what is scored.
"""

from __future__ import annotations

import base64
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg
from psycopg import sql

from mlpipe import db
from mlpipe.calibration import Calibration
from mlpipe.errors import SourceError
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

SCORE_BINS = 10_000
WORK_MEM = "256MB"
CALIBRATION_BINS = 10
# How the day is joined to keyed outcomes (see _aggregate).
MERGE_JOIN_SETTINGS = (
    "set local enable_hashjoin = off",
    "set local enable_sort = off",
    "set local max_parallel_workers_per_gather = 0",
    "set local enable_nestloop = off",
)
# A matured day's merge join runs as this many key ranges at once, each on its own connection: the
# cores PostgreSQL has here (one backend reads and groups about 1M joined rows a second).
JOIN_RANGES = 2
_EPS = 1e-15


@dataclass
class Bins:
    """Per score bin of one arm: rows, the sum of scores, positives, and log-loss and Brier sums."""

    n: np.ndarray
    score_sum: np.ndarray
    positives: np.ndarray | None = None
    log_loss_sum: float = 0.0
    brier_sum: float = 0.0


def bin_index(scores: np.ndarray) -> np.ndarray:
    """0-based score bins as the day query's least(width_bucket(score, 0, 1, SCORE_BINS), SCORE_BINS):
    width_bucket truncates score * SCORE_BINS in float8, and a score of 1 falls in the last bin."""
    return np.minimum((np.asarray(scores, dtype=np.float64) * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)


def count_bins(scores: np.ndarray) -> dict:
    """A chunk's scores in SCORE_BINS bins, for its run_chunks.summary: the non-empty bins, their rows
    and score sums, as base64 of little-endian arrays (JSON lists of 10,000 floats would be ~3x larger)."""
    index = bin_index(scores)
    n = np.bincount(index, minlength=SCORE_BINS)
    sums = np.bincount(index, np.asarray(scores, dtype=np.float64), SCORE_BINS)
    used = np.flatnonzero(n)
    return {
        "bins": SCORE_BINS,
        "index": _b64(used.astype("<u2")),
        "n": _b64(n[used].astype("<i4")),
        "score_sum": _b64(sums[used].astype("<f8")),
    }


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.tobytes()).decode("ascii")


def _unb64(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def stored_bins(conn: psycopg.Connection, spec: JobSpec, day: date, run_id: int) -> dict | None:
    """model_version -> Bins of every row of a published day, summed from what its run and its
    top-ups counted while scoring; None when any of them counted none (a run from before the bins, or
    with a challenger or shadow arm, whose rows need per-arm bins) or the counts do not add up to the
    rows the runs put in the day (then the day is scanned, as before)."""
    runs = conn.execute(
        """select r.run_id, r.kind, r.rows_scored, r.timings ->> 'rows_inserted', r.challenger_model_id,
                  m.model_version
           from mlpipe.runs r join mlpipe.models m on m.model_id = r.model_id
           where r.run_id = %(run)s
              or (r.job = %(job)s and r.as_of = %(day)s and r.kind = 'topup' and r.status = 'published'
                  and r.run_id > %(run)s)""",
        {"run": run_id, "job": spec.name, "day": day},
    ).fetchall()
    if not runs or any(challenger is not None for *_, challenger, _ in runs):
        return None
    # A top-up's row for an entity the day already had is not inserted, yet was counted.
    if any(kind == "topup" and str(scored) != inserted for _, kind, scored, inserted, *_ in runs):
        return None
    chunks = conn.execute(
        """select c.run_id, c.summary -> 'score_bins' from mlpipe.run_chunks c
           where c.run_id = any(%s)""",
        [[r[0] for r in runs]],
    ).fetchall()
    versions = {r[0]: r[5] for r in runs}
    arms: dict[str, Bins] = {}
    for run, counted in chunks:
        if not counted or counted.get("bins") != SCORE_BINS:
            return None
        bins = arms.setdefault(versions[run], Bins(np.zeros(SCORE_BINS), np.zeros(SCORE_BINS)))
        index = _unb64(counted["index"], "<u2").astype(np.int64)
        bins.n[index] += _unb64(counted["n"], "<i4")
        bins.score_sum[index] += _unb64(counted["score_sum"], "<f8")
    counted_rows = sum(int(b.n.sum()) for b in arms.values())
    if counted_rows != sum(r[2] or 0 for r in runs):
        return None
    return arms


def _history(spec: JobSpec, kind: str) -> sql.Identifier:
    name = f"{spec.name}_history" if kind == "published" else f"{spec.name}_shadow"
    return sql.Identifier("predictions", name)


def _day_table(conn: psycopg.Connection, spec: JobSpec, day: date, kind: str) -> sql.Identifier:
    """The day's own table (its partition of history or shadow): read through the parent, the day is
    an Append of the parent and the partition, which no index returns in key order (the merge join
    became a nested loop of 1M index probes)."""
    row = conn.execute(
        "select table_name from mlpipe.partitions where job = %s and kind = %s and as_of = %s",
        [spec.name, kind, day],
    ).fetchone()
    return _history(spec, kind) if row is None else sql.Identifier("mlpipe_data", row[0])


def day_bins(
    conn: psycopg.Connection,
    spec: JobSpec,
    day: date,
    kind: str = "published",
    outcomes: tuple[sql.Composable, dict] | None = None,
    stored: dict | None = None,
    merge_join: bool = False,
    ranges: int | None = None,
) -> tuple[dict, dict]:
    """(model_version -> Bins of every scored row, model_version -> Bins of the rows with an outcome)
    of a published (or shadow) day, in one scan of it. `outcomes` is a (key, label) query, one row per
    outcome, and its parameters; without it the second dict is empty. `stored`: the day's bins as its
    runs counted them (stored_bins): without outcomes the day is not read at all. `merge_join`: join
    in key order (see _aggregate), as `ranges` key ranges at once (default JOIN_RANGES; _key_bounds).

    Outcomes are joined as they come, one row per key assumed: grouping 10M outcomes by key first took
    most of the monitor's time (a hash aggregate per parallel worker). A key with several outcome rows
    would count its day's score more than once, so the joined rows are checked against the day's rows;
    if there are more, the day is computed again on each key's highest outcome, and the log says so."""
    history = _day_table(conn, spec, day, kind)
    if outcomes is None:
        if stored is not None:
            return stored, {}
        rows = _day_rows(conn, spec, day, history, _no_outcomes(spec), {})
        return _collect([r[:4] for r in rows]), {}
    source, params = outcomes
    bounds = [None]
    if merge_join:
        bounds = _key_bounds(conn, spec, day, kind, JOIN_RANGES if ranges is None else ranges)
    # One model version that day (its stored bins say so): grouped by score bin alone (~9% less work).
    only = next(iter(stored)) if stored is not None and len(stored) == 1 else None
    rows = _day_rows(conn, spec, day, history, source, params, merge_join, bounds, stored is None, only)
    joined = sum(r[2] for r in rows)
    scored = _count(conn, history, day) if stored is None else int(sum(b.n.sum() for b in stored.values()))
    if joined > scored:
        log.warning(
            "%s %s: the outcomes have %d more rows than the %d entities scored that day (several "
            "outcomes for a key): each entity's highest outcome counts, which takes longer; a source with "
            "one row per key and day avoids it",
            spec.name,
            day,
            joined - scored,
            scored,
        )
        highest = sql.SQL("select {key}, max(label) as label from ({source}) as o group by 1").format(
            key=sql.Identifier(spec.entity.key), source=source
        )
        rows = _day_rows(conn, spec, day, history, highest, params, scored=stored is None)
    scored_bins = _collect([r[:4] for r in rows]) if stored is None else stored
    return scored_bins, _collect([(r[0], r[1], *r[4:]) for r in rows if r[4]])


def _key_bounds(conn: psycopg.Connection, spec: JobSpec, day: date, kind: str, ranges: int) -> list:
    """Up to `ranges` - 1 keys (as text) that cut the day into ranges of about equal rows: chunk starts
    of the run that wrote the day (its chunks are key ranges in key order), so nothing is read of the
    day to find them; fewer when the run had fewer chunks. A top-up's rows fall in a range like any
    other: the first range has no lower bound and the last no upper one."""
    if ranges <= 1:
        return [None]
    chunks = conn.execute(
        """select c.key_lo, c.rows_scored from mlpipe.run_chunks c
           join mlpipe.partitions p on p.run_id = c.run_id
           where p.job = %s and p.kind = %s and p.as_of = %s order by c.chunk_no""",
        [spec.name, kind, day],
    ).fetchall()
    total, before, starts = sum(n for _, n in chunks), 0, []
    for key_lo, n in chunks:
        if key_lo is not None:
            starts.append((before, key_lo))
        before += n
    # For each cut, the chunk start nearest to its share of the rows.
    bounds = [None]
    for cut in range(1, ranges):
        nearest = min(starts, key=lambda start: abs(start[0] - total * cut / ranges), default=None)
        if nearest is not None and nearest[1] not in bounds:
            bounds.append(nearest[1])
    return bounds


def _day_rows(
    conn: psycopg.Connection,
    spec: JobSpec,
    day: date,
    history: sql.Identifier,
    source: sql.Composable,
    params: dict,
    merge_join: bool = False,
    bounds: list | None = None,
    scored: bool = True,
    version: str | None = None,
) -> list[tuple]:
    """(version, bin, n, score sum, with outcome, their score sum, positives, log-loss sum, Brier sum),
    of each key range [bounds[i], bounds[i + 1]) on its own connection at once, the first on `conn`.
    Without `scored` the score sum of every row is left out (null): the stored bins have it. With
    `version`, the day's only model version, rows are grouped by bin alone."""
    bounds = bounds or [None]
    queries = [
        (
            _day_query(spec, history, source, lo is not None, hi is not None, scored, version),
            {"lo": lo, "hi": hi},
        )
        for lo, hi in zip(bounds, [*bounds[1:], None], strict=True)
    ]

    def run(connection: psycopg.Connection, query: sql.Composable, bound: dict) -> list[tuple]:
        try:
            return _aggregate(connection, query, {**params, **bound, "day": day}, merge_join)
        except psycopg.errors.DataError as exc:  # e.g. a label that is not a number
            raise SourceError(f"job {spec.name}: the outcomes of {day} could not be joined: {exc}") from exc

    if len(queries) == 1:
        return run(conn, *queries[0])

    def elsewhere(query: sql.Composable, bound: dict) -> list[tuple]:
        with db.connect(db.conninfo_of(conn), autocommit=True, application_name="mlpipe-monitor") as other:
            return run(other, query, bound)

    with ThreadPoolExecutor(len(queries) - 1, thread_name_prefix="mlpipe-day-range") as pool:
        others = [pool.submit(elsewhere, *q) for q in queries[1:]]
        rows = run(conn, *queries[0])
        for other in others:
            rows.extend(other.result())
    return rows


def _day_query(
    spec: JobSpec,
    history: sql.Identifier,
    source: sql.Composable,
    low: bool = False,
    high: bool = False,
    scored: bool = True,
    version: str | None = None,
) -> sql.Composable:
    """The day left-joined to its outcomes, grouped into score bins per model version; `low`/`high`:
    only keys from %(lo)s / below %(hi)s, bound on both sides so that both index scans start and stop
    there (compared as each key column's collation orders it). Log loss takes one ln per row with a
    0/1 label, none without an outcome (ln's arguments are computed even when the label is null)."""
    key = sql.Identifier(spec.entity.key)
    key_type = sql.SQL(spec.entity.type)  # bigint or text: validated by the spec
    day_range, outcome_range = [sql.SQL("h.as_of = %(day)s")], [sql.SQL("o.{} = h.entity_id").format(key)]
    for present, bound in ((low, "{} >= %(lo)s::{}"), (high, "{} < %(hi)s::{}")):
        if present:
            day_range.append(sql.SQL(bound).format(sql.SQL("h.entity_id"), key_type))
            outcome_range.append(sql.SQL(bound).format(sql.SQL("o.{}").format(key), key_type))
    return sql.SQL(
        """with outcomes as ({source})
           select {version}, least(width_bucket(h.score, 0, 1, {bins}), {bins}) as bin,
                  count(*), {score_sum}, count(o.label), sum(h.score) filter (where o.label is not null),
                  sum(o.label),
                  -sum(case when o.label = 1 then ln(greatest(h.score, {eps}))
                            when o.label = 0 then ln(greatest(1 - h.score, {eps}))
                            when o.label is not null then o.label * ln(greatest(h.score, {eps}))
                                 + (1 - o.label) * ln(greatest(1 - h.score, {eps})) end),
                  sum((h.score - o.label) * (h.score - o.label))
           from {history} as h left join outcomes as o on {outcome_range}
           where {day_range} group by {groups}"""
    ).format(
        source=source,
        bins=sql.Literal(SCORE_BINS),
        eps=sql.Literal(_EPS),
        history=history,
        score_sum=sql.SQL("sum(h.score)" if scored else "null::float8"),
        version=sql.SQL("h.model_version") if version is None else sql.Literal(version),
        groups=sql.SQL("1, 2" if version is None else "2"),
        outcome_range=sql.SQL(" and ").join(outcome_range),
        day_range=sql.SQL(" and ").join(day_range),
    )


def _no_outcomes(spec: JobSpec) -> sql.Composable:
    # A source of none, so one query serves both cases (the planner drops the join).
    return sql.SQL("select null::{type} as {key}, null::int as label where false").format(
        type=sql.SQL(spec.entity.type),  # bigint or text: validated by the spec
        key=sql.Identifier(spec.entity.key),
    )


def _count(conn: psycopg.Connection, history: sql.Identifier, day: date) -> int:
    query = sql.SQL("select count(*) from {} where as_of = %s").format(history)
    return conn.execute(query, [day]).fetchone()[0]


def _aggregate(
    conn: psycopg.Connection, query: sql.Composable, params: dict, merge_join: bool = False
) -> list[tuple]:
    # A day's join and its 100,000-bin aggregate fit in memory with room to spare; at the default
    # work_mem (4 MB) PostgreSQL would spill both to disk in batches.
    with conn.transaction():
        conn.execute(sql.SQL("set local work_mem = {}").format(sql.Literal(WORK_MEM)))
        if merge_join:
            # Keyed outcomes (an index on their key) and the day (its primary key) are both read by
            # index in key order and merged: nothing to hash or sort, nothing spills whatever the day's
            # size. Sorts are off too because the planner guesses the outcomes' observed_at window
            # keeps 0.5% of them and would sort both sides (3M rows: 6.8-8.5 s against 5.3 s by index,
            # and 8-8.7 s hashed); parallel workers only add a Gather Merge here on 2 cores. Without an
            # index on the outcomes' key the plan sorts every outcome after all (check with EXPLAIN).
            for setting in MERGE_JOIN_SETTINGS:
                conn.execute(setting)
        return conn.execute(query, params).fetchall()


def _collect(rows: list[tuple]) -> dict:
    """Rows (version, bin, n, score sum[, positives, log-loss sum, Brier sum]) -> version -> Bins."""
    arms: dict[str, Bins] = {}
    for version in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == version]
        index = np.array([r[1] - 1 for r in mine], dtype=np.int64)
        bins = Bins(
            n=np.bincount(index, [r[2] for r in mine], SCORE_BINS),
            score_sum=np.bincount(index, [float(r[3]) for r in mine], SCORE_BINS),
        )
        if len(mine[0]) > 4:
            bins.positives = np.bincount(index, [float(r[4]) for r in mine], SCORE_BINS)
            bins.log_loss_sum = float(sum(r[5] for r in mine))
            bins.brier_sum = float(sum(r[6] for r in mine))
        arms[version] = bins
    return arms


def auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Area under the ROC curve from per-bin positive and negative counts (ties count half)."""
    p, n = positives.sum(), negatives.sum()
    if p <= 0 or n <= 0:
        return None
    negatives_below = np.cumsum(negatives) - negatives
    return float((positives * negatives_below).sum() + 0.5 * (positives * negatives).sum()) / (p * n)


def auc_variance(value: float, positives: float, negatives: float) -> float:
    """Variance of an AUC (Hanley and McNeil, 1982)."""
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (
        value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)
    ) / (positives * negatives)
    return max(float(variance), 0.0)


def auc_interval(value: float, positives: float, negatives: float) -> tuple[float, float]:
    """95% interval of an AUC (Hanley and McNeil, 1982)."""
    half = 1.96 * np.sqrt(auc_variance(value, positives, negatives))
    return max(0.0, value - half), min(1.0, value + half)


def average_precision(positives: np.ndarray, n: np.ndarray) -> float | None:
    """PR-AUC as average precision, thresholds at bin edges from the top score down."""
    total = positives.sum()
    if total <= 0:
        return None
    tp, seen = np.cumsum(positives[::-1]), np.cumsum(n[::-1])
    precision = np.divide(tp, seen, out=np.zeros_like(tp, dtype=float), where=seen > 0)
    return float((positives[::-1] / total * precision).sum())


def calibration(bins: Bins) -> list[dict]:
    """Ten equal-width score bins: rows, mean score and observed positive rate."""
    groups = np.arange(SCORE_BINS) * CALIBRATION_BINS // SCORE_BINS
    n = np.bincount(groups, bins.n, CALIBRATION_BINS)
    scores = np.bincount(groups, bins.score_sum, CALIBRATION_BINS)
    positives = np.bincount(groups, bins.positives, CALIBRATION_BINS)
    return [
        {
            "bin": i,
            "n": int(n[i]),
            "mean_score": float(scores[i] / n[i]) if n[i] else None,
            "positive_rate": float(positives[i] / n[i]) if n[i] else None,
        }
        for i in range(CALIBRATION_BINS)
    ]


def _expected_rate(bins: Bins, recalibration: Calibration | None) -> np.ndarray:
    mean = np.divide(bins.score_sum, bins.n, out=np.zeros(len(bins.n)), where=bins.n > 0)
    return mean if recalibration is None else recalibration.apply(mean)


def estimated(bins: Bins, recalibration: Calibration | None = None) -> dict:
    """Expected AUC and positive rate from the scores alone. Scores are read through the model's
    recalibration (a Platt map fitted on its test set at training), as NannyML's CBPE calibrates on
    its reference data first: a model that is a little off in calibration would bias the estimate."""
    n = bins.n.sum()
    expected_positives = bins.n * _expected_rate(bins, recalibration)
    value = auc(expected_positives, bins.n - expected_positives)
    return {
        "n": int(n),
        "mean_score": float(bins.score_sum.sum() / n) if n else None,
        "estimated_roc_auc": value,
        "estimated_positive_rate": float(expected_positives.sum() / n) if n else None,
    }


def realized(bins: Bins) -> dict:
    """Realized metrics of an arm, with the reason when a figure cannot be computed."""
    n, positives = int(bins.n.sum()), float(bins.positives.sum())
    figures = {"n": n, "positives": int(positives), "unavailable": None}
    if n == 0:
        return {**figures, "unavailable": "no outcomes for the entities scored that day"}
    value = auc(bins.positives, bins.n - bins.positives)
    figures.update(
        log_loss=bins.log_loss_sum / n,
        brier=bins.brier_sum / n,
        pr_auc=average_precision(bins.positives, bins.n),
        calibration=calibration(bins),
    )
    if value is None:
        single = "positive" if positives == n else "negative"
        return {**figures, "unavailable": f"every outcome that day is {single}: AUC is undefined"}
    low, high = auc_interval(value, positives, n - positives)
    return {**figures, "roc_auc": value, "roc_auc_lo": low, "roc_auc_hi": high}
