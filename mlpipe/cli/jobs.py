"""`mlpipe jobs`: the jobs this mlpipe finds, where each comes from, and its champion."""

from __future__ import annotations

from mlpipe import db, registry
from mlpipe.cli.common import JsonOption, job_paths, prepare, print_json, print_rows
from mlpipe.errors import SpecError
from mlpipe.spec import load_job


def jobs(as_json: JsonOption = False) -> None:
    """Every job found (MLPIPE_JOBS_PATH, ./jobs, bundled): name, path, entity, history, champion."""
    settings, url, _ = prepare()
    rows = []
    with db.connection(url) as conn:
        for name, path in job_paths(settings).items():
            row = {"name": name, "path": str(path), "entity": "", "history": "", "champion": ""}
            try:
                spec = load_job(path, settings)
            except SpecError as exc:  # one broken spec must not hide the others
                row["entity"] = f"invalid: {exc.problem}"
                rows.append(row)
                continue
            champion = registry.champion(conn, spec.name)
            row.update(
                entity=f"{spec.entity.key} ({spec.entity.type})",
                history=f"{'events' if spec.history else 'snapshot'}, {spec.outputs.history_days} days kept",
                champion=champion.model_version if champion else None,
            )
            rows.append(row)
    if as_json:
        print_json(rows)
        return
    print_rows("jobs", rows)
