"""`mlpipe models`: the registry from the command line (list, show, promote, rollback, diff)."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Annotated

import typer
from rich.table import Table

from mlpipe import db, registry
from mlpipe.cli.common import (
    JobOption,
    JsonOption,
    ReasonOption,
    VersionArgument,
    console,
    job_of_version,
    prepare,
    print_json,
    print_rows,
)
from mlpipe.errors import UsageError

models_app = typer.Typer(help="The model registry: list, show, promote, rollback, diff.")

DEFAULT_JOB = "churn"
# Subcommands that print a table (and so take --json); promote and rollback print one line.
_JSON_COMMANDS = ("list", "show", "diff")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context, job: JobOption = None, as_json: JsonOption = False) -> None:
    """Registered model versions of a job (list when no subcommand is given).

    --job and --json given here apply to the subcommand (`models --job titanic list`)."""
    if ctx.invoked_subcommand is None:
        models_list(ctx, job=job, as_json=as_json)
        return
    if as_json and ctx.invoked_subcommand not in _JSON_COMMANDS:
        raise UsageError(f"--json: `models {ctx.invoked_subcommand}` prints no table; drop --json")
    ctx.obj = {"job": job, "json": as_json}


def _job(ctx: typer.Context, job: str | None, *versions: str) -> str:
    """The job a subcommand acts on: --job (here or on `models`), else the one its version names."""
    group = (ctx.obj or {}).get("job")
    if job and group and job != group:
        raise UsageError(f"--job given twice ({group} on `models`, {job} on the subcommand): give one")
    chosen = job or group
    for version in versions:
        named = job_of_version(version)
        if named and chosen and named != chosen:
            raise UsageError(f"{version} is a version of job {named}, not {chosen}: drop --job or fix it")
        chosen = chosen or named
    return chosen or DEFAULT_JOB


def _json(ctx: typer.Context, as_json: bool) -> bool:
    return as_json or bool((ctx.obj or {}).get("json"))


@models_app.command("list")
def models_list(ctx: typer.Context, job: JobOption = None, as_json: JsonOption = False) -> None:
    """Versions with their test metrics, aliases and promotion decision."""
    as_json = _json(ctx, as_json)
    _, url, spec = prepare(_job(ctx, job))
    with db.connection(url) as conn:
        rows = registry.list_models(conn, spec.name)
    if as_json:
        print_json(rows)
        return
    metric = spec.model.metric
    out = Table("version", "algorithm", "aliases", "trained as of", metric, "brier", "decision", "created")
    for r in rows:
        test = r["test_metrics"] or {}
        out.add_row(
            r["model_version"],
            r["algorithm"],
            r["aliases"],
            str(r["trained_as_of"]),
            f"{test.get(metric, float('nan')):.4f}",
            f"{test.get('brier', float('nan')):.4f}",
            r["decision"] or "",
            f"{r['created_at']:%Y-%m-%d %H:%M}",
        )
    console.print(out)


@models_app.command("show")
def models_show(
    ctx: typer.Context, version: VersionArgument, job: JobOption = None, as_json: JsonOption = False
) -> None:
    """One version: lineage, metrics, calibration, behaviour, alias history and the days it published."""
    as_json = _json(ctx, as_json)
    _, url, spec = prepare(_job(ctx, job, version))
    with db.connection(url) as conn:
        info = registry.details(conn, spec.name, version)
        history = registry.alias_history(conn, spec.name)
    if as_json:
        print_json({**info, "alias_history": history})
        return
    test = info["metrics"]["test"]
    facts = Table(title=info["model_version"], show_header=False)
    for label, value in (
        ("algorithm", info["algorithm"]),
        ("aliases", info["aliases"] or "-"),
        ("trained as of", info["trained_as_of"]),
        ("training window", json.dumps(info["training_window"])),
        ("row counts", json.dumps(info["row_counts"])),
        ("artifact", f"{info['artifact_uri']} (sha256 {info['artifact_sha256'][:16]}…)"),
        ("libraries", json.dumps(info["library_versions"])),
        ("test", ", ".join(f"{k} {test[k]:.4f}" for k in ("roc_auc", "pr_auc", "log_loss", "brier"))),
        ("calibration", (info["calibration"] or {}).get("method", "none")),
        (
            "behaviour",
            "; ".join(
                f"{c['check']}: {'ok' if c['passed'] else 'FAILED'}"
                for c in (info["behaviour"] or {}).get("checks", [])
            )
            or "-",
        ),
        ("decision", "; ".join((info["promotion"] or {}).get("reasons", []))),
    ):
        facts.add_row(label, str(value))
    console.print(facts)
    print_rows("days published", info["published"])
    print_rows(f"alias history of {spec.name}", history)


@models_app.command("promote")
def models_promote(
    ctx: typer.Context, version: VersionArgument, reason: ReasonOption, job: JobOption = None
) -> None:
    """Make a version the champion by hand; the next scoring run uses it."""
    _, url, spec = prepare(_job(ctx, job, version))
    with db.connection(url) as conn:
        model = registry.get(conn, spec.name, model_version=version)
        previous = registry.promote(conn, spec.name, model, reason, _operator())
    was = previous.model_version if previous else "none"
    console.print(f"{model.model_version} is now the champion of {spec.name} (was {was})")


@models_app.command("rollback")
def models_rollback(
    ctx: typer.Context,
    reason: ReasonOption,
    job: JobOption = None,
    republish: Annotated[
        bool,
        typer.Option(
            help="Point the view back at the newest day the restored "
            "model published, now, without re-scoring."
        ),
    ] = False,
) -> None:
    """Restore the previous champion for the next run (and, with --republish, for readers now)."""
    from mlpipe import publish

    settings, url, spec = prepare(_job(ctx, job))
    with db.connection(url) as conn:
        demoted, restored = registry.rollback(conn, spec.name, reason, _operator())
        conn.commit()
        console.print(f"champion of {spec.name}: {demoted.model_version} -> {restored.model_version}")
        if republish:
            day = publish.republish_latest(
                conn,
                spec,
                restored.model_id,
                f"rollback to {restored.model_version}",
                lock_timeout_ms=settings.lock_timeout_ms,
                attempts=settings.publish_retries,
            )
            console.print(f"predictions.{spec.name} now shows {day}, scored by {restored.model_version}")


@models_app.command("diff")
def models_diff(
    ctx: typer.Context,
    a: VersionArgument,
    b: VersionArgument,
    job: JobOption = None,
    as_json: JsonOption = False,
) -> None:
    """Two versions side by side: metrics, parameters, features, training window."""
    as_json = _json(ctx, as_json)
    _, url, spec = prepare(_job(ctx, job, a, b))
    with db.connection(url) as conn:
        left, right = registry.details(conn, spec.name, a), registry.details(conn, spec.name, b)
    rows = _diff_rows(left, right)
    if as_json:
        print_json({"a": left["model_version"], "b": right["model_version"], "differences": rows})
        return
    out = Table("", left["model_version"], right["model_version"], "b - a")
    for name, x, y, delta in rows:
        out.add_row(name, str(x), str(y), "" if delta is None else f"{delta:+.4f}")
    console.print(out)


def _diff_rows(left: dict, right: dict) -> list[tuple]:
    rows = []
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier"):
        x, y = left["metrics"]["test"][metric], right["metrics"]["test"][metric]
        rows.append((f"test {metric}", round(x, 4), round(y, 4), y - x))
    for label, key in (
        ("algorithm", "algorithm"),
        ("trained as of", "trained_as_of"),
        ("calibration", "calibration"),
        ("chosen params", "params"),
    ):
        x, y = left[key], right[key]
        if key == "params":
            x, y = x.get("chosen"), y.get("chosen")
        if key == "calibration":
            x, y = (x or {}).get("method", "none"), (y or {}).get("method", "none")
        rows.append((label, x, y, None))
    lcols, rcols = left["feature_schema"]["columns"], right["feature_schema"]["columns"]
    rows.append(("features only in a", sorted(set(lcols) - set(rcols)) or "-", "", None))
    rows.append(("features only in b", "", sorted(set(rcols) - set(lcols)) or "-", None))
    rows.append(("training rows", left["row_counts"].get("train"), right["row_counts"].get("train"), None))
    return rows


def _operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (mlpipe cli)"


rollout_app = typer.Typer(help="Progressive rollout of a challenger: start, status, pause, resume, abort.")
models_app.add_typer(rollout_app, name="rollout")


@rollout_app.command("start")
def rollout_start(version: VersionArgument, reason: ReasonOption, job: JobOption = "churn") -> None:
    """Roll a version out by the job's outputs.rollout steps; the next scoring run gives it step 1."""
    from mlpipe import rollout

    _, url, spec = prepare(job)
    with db.connection(url, autocommit=True) as conn:
        started = rollout.start(conn, spec, version, reason, _operator())
    console.print(
        f"rollout {started.rollout_id} of {version} for {spec.name} started at {started.where}; "
        "each day's monitor advances it, promotes it or rolls it back"
    )


@rollout_app.command("status")
def rollout_status(job: JobOption = "churn", as_json: JsonOption = False) -> None:
    """The job's newest rollout: its step, share, days at the step and the last check's figures."""
    from mlpipe import rollout

    _, url, spec = prepare(job)
    with db.connection(url, autocommit=True) as conn:
        info = rollout.status(conn, spec.name)
    if as_json:
        print_json(info)
        return
    if info is None:
        console.print(f"job {spec.name} has had no rollout")
        return
    check = info["last_check"] or {}
    facts = Table(title=f"rollout {info['rollout_id']} of {spec.name}", show_header=False)
    for label, value in (
        ("challenger", info["challenger"]),
        ("champion at start", info["champion_at_start"]),
        ("status", info["status"]),
        ("step", f"{info['step']} of {len(info['steps'])}: {_steps(info['steps'])}"),
        ("challenger share now", f"{info['share']:.0%}"),
        ("days at this step", f"{info['days_at_step']} (from {info['first_day_at_step'] or '-'})"),
        ("started", f"{info['started_at']:%Y-%m-%d %H:%M} by {info['started_by']}: {info['reason']}"),
        ("last check", f"{info['checked_as_of'] or '-'}: {check.get('verdict', '-')}"),
        ("why", "; ".join(check.get("reasons", [])) or "-"),
        ("last change", _last_change(info["last_change"])),
    ):
        facts.add_row(label, str(value))
    console.print(facts)


def _change(action: str, job: str, reason: str) -> None:
    from mlpipe import rollout

    _, url, spec = prepare(job)
    with db.connection(url, autocommit=True) as conn:
        changed = getattr(rollout, action)(conn, spec.name, reason, _operator())
    console.print(
        f"rollout {changed.rollout_id} of {spec.name} is {changed.status} at {changed.where}; "
        f"challenger share now {changed.share:.0%}"
    )


@rollout_app.command("pause")
def rollout_pause(job: JobOption = "churn", reason: ReasonOption = "paused by an operator") -> None:
    """Hold the rollout at its step: the challenger keeps its share, nothing advances."""
    _change("pause", job, reason)


@rollout_app.command("resume")
def rollout_resume(job: JobOption = "churn", reason: ReasonOption = "resumed by an operator") -> None:
    """Let a paused rollout advance again after the next monitor."""
    _change("resume", job, reason)


@rollout_app.command("abort")
def rollout_abort(reason: ReasonOption, job: JobOption = "churn") -> None:
    """End the rollout now: the challenger's share drops to 0 and the champion keeps everything."""
    _change("abort", job, reason)


def _steps(steps: list[float]) -> str:
    return " -> ".join(f"{share:.0%}" for share in steps)


def _last_change(change: dict | None) -> str:
    if change is None:
        return "-"
    return f"{change['changed_at']:%Y-%m-%d %H:%M} by {change['changed_by']}: {change['reason']}"
