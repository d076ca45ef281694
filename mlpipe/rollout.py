"""Progressive rollout of a challenger, decided by production outcomes; its state lives in PostgreSQL.

A rollout gives the challenger a growing share of entities (the job's `outputs.rollout.steps`), by
the stable hash bucket of mlpipe.chunks.challenger_arm: an entity in the challenger at 5% stays in it
at 25%. Every scoring run records the rollout step it scored at, so a step's days are the days
published at it. After each day's monitor, `advance` judges the step:

- leading signals on every day of the step (no outcomes needed): the challenger arm's estimated AUC
  against the champion arm's, its score distribution against its own test scores (PSI), and the
  day's quarantine rate. One crossed rolls back at once.
- once the step has baked its days and each arm has enough matured outcomes: non-inferiority of ROC
  AUC with its interval. The arms are disjoint sets of entities, so the variance of the difference is
  the sum of the arms' (Hanley and McNeil); the challenger passes when the lower 95% bound of
  (challenger - champion) is above -max_metric_loss, and otherwise rolls back. Consecutive days
  score the same entities with overlapping outcome windows, so days are pooled (weighted by
  positives x negatives) without letting more days narrow the interval: the pooled variance is the
  weighted mean of the days' variances, not their sum over the number of days.

Passing the last step below 100% (or reaching a step of 100%) makes the challenger the champion.
Every change is a row in mlpipe.alias_history: who (the monitor or a person), why (the figures).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from mlpipe import drift, registry
from mlpipe.errors import ModelNotFoundError, NoChampionError, UsageError
from mlpipe.features import matrix_columns
from mlpipe.registry import ModelVersion
from mlpipe.rollout_judge import FAIL, PASS, WAIT, Check, judge
from mlpipe.spec import JobSpec
from mlpipe.spec import Rollout as RolloutPlan

log = logging.getLogger(__name__)

MONITOR = "mlpipe monitor (rollout)"
ACTIVE = ("running", "paused")


@dataclass(frozen=True)
class Rollout:
    """One rollout as stored in mlpipe.rollouts."""

    rollout_id: int
    job: str
    model_id: int
    champion_model_id: int
    steps: list[float]
    step_index: int
    status: str
    started_at: datetime
    started_by: str
    reason: str
    step_changed_at: datetime
    ended_at: datetime | None
    checked_as_of: date | None
    last_check: dict | None

    @property
    def share(self) -> float:
        """The challenger's share of entities now (0 once the rollout has ended)."""
        return self.steps[self.step_index] if self.status in ACTIVE else 0.0

    @property
    def where(self) -> str:
        """ "step 2 of 4 (25%)"."""
        return f"step {self.step_index + 1} of {len(self.steps)} ({self.steps[self.step_index]:.0%})"


_COLUMNS = sql.SQL(
    "rollout_id, job, model_id, champion_model_id, steps, step_index, status, started_at, started_by, "
    "reason, step_changed_at, ended_at, checked_as_of, last_check"
)


def _select(conn: psycopg.Connection, where: str, params: list, *, lock: bool = False) -> Rollout | None:
    query = sql.SQL("select {} from mlpipe.rollouts where {} order by rollout_id desc limit 1{}").format(
        _COLUMNS, sql.SQL(where), sql.SQL(" for update" if lock else "")
    )
    row = conn.execute(query, params).fetchone()
    return Rollout(*row) if row else None


def active(conn: psycopg.Connection, job: str, *, lock: bool = False) -> Rollout | None:
    """The job's running or paused rollout, or None."""
    return _select(conn, "job = %s and status in ('running', 'paused')", [job], lock=lock)


def latest(conn: psycopg.Connection, job: str) -> Rollout | None:
    """The job's newest rollout, whatever its status."""
    return _select(conn, "job = %s", [job])


def _plan(spec: JobSpec) -> RolloutPlan:
    if spec.outputs.rollout is None:
        raise UsageError(
            f"job {spec.name} declares no outputs.rollout; add one to {spec.folder / 'job.yaml'} "
            "(steps, bake_days, min_matured_outcomes, max_metric_loss) and start again"
        )
    return spec.outputs.rollout


def _version_of(conn: psycopg.Connection, spec: JobSpec, version: str) -> ModelVersion:
    """The job's model named `version`, or one line saying whose model it is."""
    try:
        return registry.get(conn, spec.name, model_version=version)
    except ModelNotFoundError:
        other = conn.execute("select job from mlpipe.models where model_version = %s", [version]).fetchone()
        if other is None:
            raise
        raise UsageError(
            f"{version} is a model of job {other[0]}, not {spec.name}: roll out a version of "
            f"{spec.name} (`mlpipe models --job {spec.name}` lists them)"
        ) from None


def _busy(running: Rollout, model_version: str) -> str:
    return (
        f"rollout {running.rollout_id} of {model_version} is {running.status} for job {running.job} "
        f"({running.where}); finish it or abort it first "
        f"(`mlpipe models rollout abort --job {running.job} --reason ...`)"
    )


def start(conn: psycopg.Connection, spec: JobSpec, version: str, reason: str, changed_by: str) -> Rollout:
    """Start rolling `version` out at the first step; refuses a second rollout, the champion itself,
    a version of another job or one trained on other features."""
    plan = _plan(spec)
    model = _version_of(conn, spec, version)
    champion = registry.champion(conn, spec.name)
    if champion is None:
        raise NoChampionError(f"job {spec.name} has no champion to roll out against: train one first")
    if champion.model_id == model.model_id:
        raise UsageError(
            f"{model.model_version} is already the champion of {spec.name}: roll out another version "
            f"(`mlpipe models --job {spec.name}` lists them)"
        )
    if model.feature_schema["columns"] != matrix_columns(spec):
        raise UsageError(
            f"{model.model_version} was trained on other features than job {spec.name} has now; "
            f"roll out a version trained on the current spec (`mlpipe train --job {spec.name}`)"
        )
    try:
        with conn.transaction():
            running = active(conn, spec.name, lock=True)
            if running is not None:
                raise UsageError(_busy(running, _name(conn, spec.name, running.model_id)))
            rollout_id = conn.execute(
                """insert into mlpipe.rollouts (job, model_id, champion_model_id, steps, status, started_by,
                       reason)
                   values (%s, %s, %s, %s, 'running', %s, %s) returning rollout_id""",
                [spec.name, model.model_id, champion.model_id, plan.steps, changed_by, reason],
            ).fetchone()[0]
            why = (
                f"rollout {rollout_id} started at step 1 of {len(plan.steps)} ({plan.steps[0]:.0%}): {reason}"
            )
            registry.set_alias(
                conn, spec.name, "challenger", model.model_id, why, changed_by, share=plan.steps[0]
            )
    except psycopg.errors.UniqueViolation:  # another operator started one at the same moment
        running = active(conn, spec.name)
        raise UsageError(_busy(running, _name(conn, spec.name, running.model_id))) from None
    log.info("job %s: rollout %s of %s started", spec.name, rollout_id, model.model_version)
    return active(conn, spec.name)


def _name(conn: psycopg.Connection, job: str, model_id: int) -> str:
    return registry.get(conn, job, model_id=model_id).model_version


def _locked(conn: psycopg.Connection, job: str, allowed: tuple[str, ...], action: str) -> Rollout:
    current = active(conn, job, lock=True)
    if current is None:
        raise UsageError(
            f"job {job} has no rollout running or paused to {action}; start one with "
            f"`mlpipe models rollout start VERSION --job {job} --reason ...`"
        )
    if current.status not in allowed:
        raise UsageError(f"rollout {current.rollout_id} of {job} is {current.status}, so it cannot {action}")
    return current


def pause(conn: psycopg.Connection, job: str, reason: str, changed_by: str) -> Rollout:
    """Hold a running rollout at its step: the challenger keeps its share, nothing advances."""
    return _set_status(conn, job, ("running",), "paused", reason, changed_by)


def resume(conn: psycopg.Connection, job: str, reason: str, changed_by: str) -> Rollout:
    """Let a paused rollout advance again after the next monitor."""
    return _set_status(conn, job, ("paused",), "running", reason, changed_by)


def _set_status(
    conn, job: str, allowed: tuple[str, ...], status: str, reason: str, changed_by: str
) -> Rollout:
    with conn.transaction():
        current = _locked(conn, job, allowed, {"paused": "pause", "running": "resume"}[status])
        conn.execute(
            "update mlpipe.rollouts set status = %s where rollout_id = %s", [status, current.rollout_id]
        )
        why = f"rollout {current.rollout_id} {status} at {current.where}: {reason}"
        registry.set_alias(conn, job, "challenger", current.model_id, why, changed_by, share=current.share)
    return _select(conn, "rollout_id = %s", [current.rollout_id])


def abort(conn: psycopg.Connection, job: str, reason: str, changed_by: str) -> Rollout:
    """End a rollout by hand: the challenger's share drops to 0 and the champion keeps everything."""
    with conn.transaction():
        current = _locked(conn, job, ACTIVE, "abort")
        _end(
            conn,
            current,
            "aborted",
            f"rollout {current.rollout_id} aborted at {current.where}: {reason}",
            changed_by,
        )
    return _select(conn, "rollout_id = %s", [current.rollout_id])


def _end(conn, current: Rollout, status: str, why: str, changed_by: str) -> None:
    conn.execute(
        "update mlpipe.rollouts set status = %s, ended_at = now() where rollout_id = %s",
        [status, current.rollout_id],
    )
    challenger = registry.challenger(conn, current.job)
    if challenger is not None and challenger.model_id != current.model_id:  # named by hand meanwhile: kept
        registry.set_alias(conn, current.job, "challenger", challenger.model_id, why, changed_by, share=0.0)
    else:
        registry.clear_alias(conn, current.job, "challenger", why, changed_by, share=0.0)


def advance(conn: psycopg.Connection, spec: JobSpec, as_of: date, changed_by: str = MONITOR) -> Check | None:
    """After the monitor of `as_of`: judge the running rollout's step and advance it, promote the
    challenger, or roll it back; None when no rollout is running."""
    with conn.transaction():
        current = active(conn, spec.name, lock=True)
        if current is None or current.status != "running":
            return None
        if spec.outputs.rollout is None:
            log.warning(
                "job %s has rollout %s running but declares no outputs.rollout: not judged",
                spec.name,
                current.rollout_id,
            )
            return None
        champion = registry.champion(conn, spec.name)
        if champion is None or champion.model_id != current.champion_model_id:
            check = Check(FAIL, ["the champion was changed by hand during the rollout"])
            _end(conn, current, "aborted", _why(current, check), changed_by)
        else:
            check = evaluate(conn, spec, spec.outputs.rollout, current, as_of)
            if check.verdict == PASS:
                _step_up(conn, current, check, changed_by)
            elif check.verdict == FAIL:
                _end(conn, current, "rolled_back", _why(current, check), changed_by)
        conn.execute(
            "update mlpipe.rollouts set checked_as_of = %s, last_check = %s where rollout_id = %s",
            [as_of, Jsonb(check.as_dict()), current.rollout_id],
        )
    log.info(
        "job %s rollout %s as of %s: %s (%s)",
        spec.name,
        current.rollout_id,
        as_of,
        check.verdict,
        "; ".join(check.reasons),
    )
    return check


def _why(current: Rollout, check: Check) -> str:
    verdict = {PASS: "passed", WAIT: "waits", FAIL: "failed"}[check.verdict]
    return f"rollout {current.rollout_id} {verdict} at {current.where}: " + "; ".join(check.reasons)


def _step_up(conn, current: Rollout, check: Check, changed_by: str) -> None:
    following = current.step_index + 1
    if following >= len(current.steps) or current.steps[following] >= 1.0:
        model = registry.get(conn, current.job, model_id=current.model_id)
        registry.promote(
            conn, current.job, model, _why(current, check) + "; now the champion", changed_by, share=1.0
        )
        conn.execute(
            """update mlpipe.rollouts set status = 'promoted', ended_at = now(), step_index = %s,
                   step_changed_at = now() where rollout_id = %s""",
            [min(following, len(current.steps) - 1), current.rollout_id],
        )
        return
    share = current.steps[following]
    conn.execute(
        "update mlpipe.rollouts set step_index = %s, step_changed_at = now() where rollout_id = %s",
        [following, current.rollout_id],
    )
    why = _why(current, check) + f"; now step {following + 1} of {len(current.steps)} ({share:.0%})"
    registry.set_alias(conn, current.job, "challenger", current.model_id, why, changed_by, share=share)


def evaluate(
    conn: psycopg.Connection, spec: JobSpec, plan: RolloutPlan, current: Rollout, as_of: date
) -> Check:
    """The step's verdict from the days published at it (up to `as_of`) and the monitor's figures."""
    days = step_days(conn, current, as_of)
    if not days:
        return Check(WAIT, ["no day published at this step yet"], {"days": 0})
    rows = conn.execute(
        """select as_of, arm, matured, n, positives, roc_auc, estimated_roc_auc from mlpipe.performance
           where job = %s and run_id = any(%s) and arm in ('champion', 'challenger') order by as_of""",
        [spec.name, [d["run_id"] for d in days]],
    ).fetchall()
    arms = [
        dict(zip(("as_of", "arm", "matured", "n", "positives", "roc_auc", "estimated"), r, strict=True))
        for r in rows
    ]
    challenger = registry.get(conn, spec.name, model_id=current.model_id)
    psi = challenger_score_psi(conn, spec, challenger, days[-1]["as_of"])
    return judge(plan, days, arms, psi)


def step_days(conn: psycopg.Connection, current: Rollout, as_of: date) -> list[dict]:
    """Published days scored at the rollout's current step, oldest first, with their run's counts."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """select p.as_of, r.run_id, r.population, r.rows_quarantined
               from mlpipe.partitions p join mlpipe.runs r using (run_id)
               where p.job = %s and p.kind = 'published' and r.rollout_id = %s and r.rollout_step = %s
                 and p.as_of <= %s
               order by p.as_of""",
            [current.job, current.rollout_id, current.step_index, as_of],
        )
        return cur.fetchall()


def challenger_score_psi(
    conn: psycopg.Connection, spec: JobSpec, model: ModelVersion, day: date
) -> float | None:
    """PSI of the challenger arm's published scores of a day against the model's own test scores."""
    reference = (model.reference.get("histograms") or {}).get(drift.SCORE)
    if reference is None:
        return None
    query = sql.SQL(
        """select least(width_bucket(score, 0, 1, {bins}), {bins}), count(*) from {history}
           where as_of = %s and model_version = %s group by 1"""
    ).format(
        bins=sql.Literal(len(drift.SCORE_EDGES) - 1),
        history=sql.Identifier("predictions", f"{spec.name}_history"),
    )
    counts = np.zeros(drift.size(reference), dtype=np.int64)
    for bucket, n in conn.execute(query, [day, model.model_version]):
        counts[drift.MISSING + 1 + bucket] = n  # inner bins follow the missing and below bins
    return drift.psi(counts, reference["counts"]) if counts.sum() else None


def record_run(conn: psycopg.Connection, run_id: int, share: float, current: Rollout | None) -> None:
    """A scoring run's challenger share, and the rollout step it scores at (its days count for it)."""
    conn.execute(
        "update mlpipe.runs set challenger_share = %s, rollout_id = %s, rollout_step = %s where run_id = %s",
        [share, current and current.rollout_id, current and current.step_index, run_id],
    )


def run_share(conn: psycopg.Connection, run_id: int) -> float | None:
    """The challenger share a run was started with (None: no challenger, or a run from before)."""
    row = conn.execute("select challenger_share from mlpipe.runs where run_id = %s", [run_id]).fetchone()
    return row and row[0]


def status(conn: psycopg.Connection, job: str) -> dict | None:
    """The job's newest rollout as plain data, for `mlpipe models rollout status`."""
    current = latest(conn, job)
    if current is None:
        return None
    days = step_days(conn, current, date.max)
    change = conn.execute(
        """select changed_at, changed_by, reason from mlpipe.alias_history
           where job = %s and share is not null and changed_at >= %s order by change_id desc limit 1""",
        [job, current.started_at],
    ).fetchone()
    return {
        **asdict(current),
        "challenger": _name(conn, job, current.model_id),
        "champion_at_start": _name(conn, job, current.champion_model_id),
        "step": current.step_index + 1,
        "share": current.share,
        "days_at_step": len(days),
        "first_day_at_step": days[0]["as_of"] if days else None,
        "last_change": change and dict(zip(("changed_at", "changed_by", "reason"), change, strict=True)),
    }
