"""The monitoring report: one self-contained HTML file from what the runs and the monitor recorded.

Every chart is an Altair spec rendered to inline SVG by vl-convert, so the file draws with no
JavaScript, no network and no external font, stylesheet or image. A section with nothing to show yet
(no matured day, a model without reference histograms, a job that never ran) says so in one sentence.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import psycopg

from mlpipe import monitor
from mlpipe import report_charts as charts
from mlpipe.settings import Settings
from mlpipe.spec import JobSpec

log = logging.getLogger(__name__)

MAX_DISTRIBUTIONS = 12  # flagged inputs drawn; the rest are in the table
LEVEL_ORDER = {"fail": 0, "warn": 1, "ok": 2}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1320px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
p.meta { color: #666; margin-top: 0; } p.empty { color: #555; font-style: italic; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .25rem .6rem; text-align: left; }
td { white-space: nowrap; } td:last-child { white-space: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.fail { color: #fff; background: #c8553d; } td.warn { background: #f4cf86; } td.ok { color: #2f6b47; }
figure.chart { margin: .6rem 0; } figure.chart svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .8rem; }
.grid { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }
"""


@dataclass(frozen=True)
class Window:
    job: str
    start: date
    end: date

    @property
    def params(self) -> dict:
        return {"job": self.job, "start": self.start, "end": self.end}


def build_report(conn: psycopg.Connection, spec: JobSpec, days: int = 90, as_of: date | None = None) -> str:
    """The job's monitoring report over the `days` before `as_of` (default today) as one HTML document."""
    end = as_of or date.today()
    window = Window(spec.name, end - timedelta(days=days), end)
    sections = [
        ("Key figures", _key_figures(conn, spec, end)),
        ("Run health", _run_health(conn, window)),
        ("Score distribution against training", _score_distribution(conn, window)),
        ("Drift", _drift(conn, spec, window)),
        ("Performance: realized and estimated", _performance(conn, spec, window)),
        ("Calibration", _calibration(conn, spec, window)),
        ("Champion, challenger and shadow", _arms(conn, window)),
        ("Model versions and alias changes", _timeline(conn, window)),
    ]
    title = f"mlpipe monitoring report: {spec.name}"
    body = "".join(f"<section><h2>{_esc(name)}</h2>{content}</section>" for name, content in sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>"
        f'<p class="meta">{_esc(f"{window.start} to {window.end} ({days} days); generated ")}'
        f"{_esc(datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z'))}</p>{body}</body></html>"
    )


def default_path(settings: Settings, spec: JobSpec) -> Path:
    """Where the monitor keeps a job's newest report: MLPIPE_HOME/reports/<job>.html."""
    return settings.home / "reports" / f"{spec.name}.html"


def write_report(
    conn: psycopg.Connection, spec: JobSpec, out: Path, days: int = 90, as_of: date | None = None
) -> Path:
    """Build the report and write it to `out` (folders made as needed); returns the path written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(conn, spec, days, as_of), encoding="utf-8")
    log.info("%s: report of %d days written to %s (%d bytes)", spec.name, days, out, out.stat().st_size)
    return out


# -- HTML pieces -------------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value))


def _empty(text: str) -> str:
    return f'<p class="empty">{_esc(text)}</p>'


def _figure(name: str, chart, caption: str = "") -> str:
    caption = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart" data-chart="{_esc(name)}">{charts.svg(chart)}{caption}</figure>'


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _table(columns: list[str], rows: list[tuple], classes: dict[int, str] | None = None) -> str:
    """An HTML table; numbers right-aligned; `classes` maps a column index to a cell class by value."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    lines = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            css = "num" if isinstance(value, int | float) and not isinstance(value, bool) else ""
            css = str(value) if classes and i in classes else css
            cells.append(f'<td class="{css}">{_esc(_fmt(value))}</td>')
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


# -- sections ----------------------------------------------------------------------------------------


def _key_figures(conn: psycopg.Connection, spec: JobSpec, as_of: date) -> str:
    figures = monitor.key_figures(conn, spec, as_of)
    if "day" not in figures:
        return _empty(f"No published day for {spec.name} up to {as_of}: score a day first.")
    return _table(["figure", "value"], [(k.replace("_", " "), v) for k, v in figures.items()])


def _run_health(conn: psycopg.Connection, w: Window) -> str:
    rows = conn.execute(
        """select run_id, as_of, status, population, rows_scored, rows_quarantined,
                  extract(epoch from finished_at - started_at)::float8, (gates ->> 'passed')::boolean, error
           from mlpipe.runs where job = %(job)s and kind = 'score' and as_of between %(start)s and %(end)s
           order by as_of, started_at""",
        w.params,
    ).fetchall()
    if not rows:
        return _empty(f"No scoring run of {w.job} for a day between {w.start} and {w.end}.")
    records = [
        {
            "day": r[1].isoformat(),
            "population": r[3],
            "scored": r[4],
            "quarantined": r[5],
            "duration_s": r[6],
            "outcome": "gate failed" if r[7] is False else r[2],
        }
        for r in rows
    ]
    failed = [
        (r[1], r[0], "gate failed" if r[7] is False else r[2], (r[8] or "").split("\n")[0]) for r in rows
    ]
    failed = [f for f in failed if f[2] in ("gate failed", "failed", "abandoned")][-10:]
    parts = [
        _figure("volumes", charts.volumes(records), f"{len(rows)} scoring runs."),
        _figure("durations", charts.durations([r for r in records if r["duration_s"] is not None])),
    ]
    parts.append(
        _table(["day", "run", "outcome", "error"], failed)
        if failed
        else _empty("No failed run in the window.")
    )
    return "".join(parts)


def histogram_quantiles(counts: list[int], edges: list[float]) -> dict | None:
    """Approximate 10th, 50th, 90th percentiles and mean of a score histogram (linear within bins)."""
    inner = counts[2 : 2 + len(edges) - 1]
    total = sum(inner)
    if not total:
        return None
    found, seen = {}, 0.0
    for i, n in enumerate(inner):
        for q in (0.1, 0.5, 0.9):
            if f"p{int(q * 100)}" not in found and n and seen + n >= q * total:
                found[f"p{int(q * 100)}"] = edges[i] + (q * total - seen) / n * (edges[i + 1] - edges[i])
        seen += n
    found["mean"] = sum(n * (edges[i] + edges[i + 1]) / 2 for i, n in enumerate(inner)) / total
    return found


def _score_distribution(conn: psycopg.Connection, w: Window) -> str:
    rows = conn.execute(
        """select p.as_of, r.input_histograms -> 'score', m.reference -> 'histograms' -> 'score'
           from mlpipe.partitions p join mlpipe.runs r using (run_id)
           join mlpipe.models m on m.model_id = r.model_id
           where p.job = %(job)s and p.kind = 'published' and p.as_of between %(start)s and %(end)s
           order by p.as_of""",
        w.params,
    ).fetchall()
    records = []
    for day, counts, reference in rows:
        if not counts or not reference:
            continue
        for source, values in (("scored day", counts), ("training", reference["counts"])):
            figures = histogram_quantiles(values, reference["edges"])
            if figures:
                records.append({"day": day.isoformat(), "source": source, **figures})
    if not records:
        return _empty(
            "No published day in the window has score counts in its model's training bins "
            "(no day scored yet, or the model predates reference histograms: retrain to get them)."
        )
    return _figure(
        "score",
        charts.score_quantiles(records),
        "Grey: the training reference (the out-of-time test scores of the model that scored each day), "
        "10th-90th percentile band and dashed median.",
    )


def bin_labels(reference: dict) -> list[str]:
    """A label for each bin of a reference's count vector (see mlpipe.drift for the layout)."""
    if reference["kind"] == "categorical":
        return ["missing", "unknown", *map(str, reference["categories"])]
    edges = [f"{e:.3g}" for e in reference["edges"]]
    inner = [f"[{a}, {b})" for a, b in zip(edges, edges[1:], strict=False)]
    inner[-1] = inner[-1][:-1] + "]"
    return ["missing", f"< {edges[0]}", *inner, f"> {edges[-1]}"]


def _shares(reference: dict, counts: list[int]) -> list[dict]:
    """Training and day shares per bin; the outer bins only when either side has rows in them."""
    labels, training = bin_labels(reference), reference["counts"]
    totals = {"training": sum(training) or 1, "day": sum(counts) or 1}
    outer = {0, 1, len(labels) - 1}
    rows = []
    for i, label in enumerate(labels):
        if i in outer and not (training[i] or counts[i]):
            continue
        for source, values in (("training", training), ("day", counts)):
            rows.append({"bin": label, "source": source, "share": values[i] / totals[source]})
    return rows


def _drift(conn: psycopg.Connection, spec: JobSpec, w: Window) -> str:
    rows = conn.execute(
        """select d.as_of, d.feature, d.level, d.psi_reference, d.js_reference, d.psi_previous,
                  d.missing_share, d.unknown_share, d.reference,
                  r.input_histograms -> d.feature, m.reference -> 'histograms' -> d.feature
           from mlpipe.drift d join mlpipe.runs r using (run_id) join mlpipe.models m using (model_id)
           where d.job = %(job)s and d.as_of = (
               select max(as_of) from mlpipe.drift where job = %(job)s and as_of <= %(end)s)""",
        w.params,
    ).fetchall()
    if not rows:
        return _empty(_why_no_drift(conn, w))
    rows.sort(key=lambda r: (LEVEL_ORDER[r[2]], -(r[3] or 0.0)))
    day = rows[0][0]
    limits = spec.monitoring.drift
    note = _esc(
        f"Newest monitored day {day}; thresholds on PSI against training: warn {limits.warn:g}, "
        f"fail {limits.fail:g}."
    )
    table = _table(
        [
            "feature",
            "level",
            "PSI vs training",
            "JS vs training",
            "PSI vs previous day",
            "missing",
            "unknown",
        ],
        [r[1:8] for r in rows],
        classes={1: "level"},
    )
    flagged = [r for r in rows if r[2] != "ok" and r[9] and r[10]]
    figures = [
        _figure(f"drift-{r[1]}", charts.distribution(r[1], r[2], _shares(r[10], r[9])))
        for r in flagged[:MAX_DISTRIBUTIONS]
    ]
    more = len(flagged) - len(figures)
    tail = _empty(f"{more} more flagged inputs are in the table only.") if more > 0 else ""
    if not flagged:
        tail = _empty(f"No input crosses the warn threshold on {day}.")
    return f"<p>{note}</p>{table}<div class='grid'>{''.join(figures)}</div>{tail}"


def _why_no_drift(conn: psycopg.Connection, w: Window) -> str:
    newest = conn.execute(
        """select p.as_of, m.model_version, m.reference ? 'histograms', r.input_histograms is not null
           from mlpipe.partitions p join mlpipe.runs r using (run_id) join mlpipe.models m using (model_id)
           where p.job = %(job)s and p.kind = 'published' and p.as_of <= %(end)s
           order by p.as_of desc limit 1""",
        w.params,
    ).fetchone()
    if newest is None:
        return f"No published day of {w.job} yet: drift appears once a day is scored and monitored."
    day, version, has_reference, counted = newest
    if not (has_reference and counted):
        return (
            f"No drift for {w.job}: model {version}, which scored {day}, was trained before reference "
            f"histograms existed. Retrain (mlpipe train --job {w.job}) to monitor drift."
        )
    return f"No drift recorded for {w.job} yet: run mlpipe monitor --job {w.job}."


def _performance_rows(conn: psycopg.Connection, w: Window) -> list[dict]:
    rows = conn.execute(
        """select as_of, model_version, arm, matured, n, roc_auc, roc_auc_lo, roc_auc_hi,
                  estimated_roc_auc, unavailable
           from mlpipe.performance where job = %(job)s and as_of between %(start)s and %(end)s
           order by as_of, arm, model_version""",
        w.params,
    ).fetchall()
    names = ["day", "version", "arm", "matured", "n", "realized", "roc_auc_lo", "roc_auc_hi", "estimated"]
    return [dict(zip([*names, "unavailable"], (r[0].isoformat(), *r[1:]), strict=True)) for r in rows]


def _performance(conn: psycopg.Connection, spec: JobSpec, w: Window) -> str:
    rows = [{**r, "series": r["version"]} for r in _performance_rows(conn, w) if r["arm"] == "champion"]
    if not rows:
        return _empty(f"No performance recorded for {w.job} in the window: run mlpipe monitor --job {w.job}.")
    realized = [r for r in rows if r["realized"] is not None]
    caption = "Solid: realized on matured days, with its 95% interval; dashed: estimated from the scores."
    note = ""
    if not realized:
        reasons = sorted({r["unavailable"] for r in rows if r["unavailable"]})
        note = _empty(f"No realized figure in the window yet ({'; '.join(reasons) or 'no outcomes'}).")
    elif len(realized) >= 14:  # the trend in words: first and last week of matured days
        first, last = (sum(r["realized"] for r in week) / len(week) for week in (realized[:7], realized[-7:]))
        caption += (
            f" Realized ROC AUC, mean of 7 matured days: {first:.3f} from {realized[0]['day']}, "
            f"{last:.3f} to {realized[-1]['day']}."
        )
    return note + _figure(
        "performance", charts.performance(rows, "Champion ROC AUC per model version"), caption
    )


def _calibration(conn: psycopg.Connection, spec: JobSpec, w: Window) -> str:
    row = conn.execute(
        """select as_of, model_version, calibration from mlpipe.performance
           where job = %(job)s and arm = 'champion' and matured and calibration is not null
             and as_of <= %(end)s
           order by as_of desc limit 1""",
        w.params,
    ).fetchone()
    if row is None:
        return _empty(
            f"No matured day with outcomes yet: calibration needs the {spec.training.horizon_days}-day "
            "horizon after a scored day to pass."
        )
    points = [b for b in row[2] if b.get("n")]
    title = f"{row[0]}, {row[1]}: observed against predicted"
    return _figure("calibration", charts.calibration(points, title), "Dashed: perfect calibration.")


def _arms(conn: psycopg.Connection, w: Window) -> str:
    rows = _performance_rows(conn, w)
    if {r["arm"] for r in rows} <= {"champion"}:
        return _empty("Only the champion scored in the window: no challenger share or shadow arm to compare.")
    for r in rows:
        r["series"] = f"{r['arm']} · {r['version']}"
    summary: dict[tuple, list] = {}
    for r in rows:
        summary.setdefault((r["arm"], r["version"]), []).append(r)
    table = _table(
        ["arm", "version", "days", "rows", "mean realized AUC", "mean estimated AUC"],
        [
            (
                arm,
                version,
                len(days),
                sum(d["n"] for d in days),
                _mean(days, "realized"),
                _mean(days, "estimated"),
            )
            for (arm, version), days in sorted(summary.items())
        ],
    )
    chart = charts.performance(rows, "ROC AUC per arm")
    return _figure("arms", chart, "Solid: realized; dashed: estimated.") + table


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def _timeline(conn: psycopg.Connection, w: Window) -> str:
    events = [
        {"day": day.isoformat(), "lane": lane, "version": version}
        for day, lane, version in conn.execute(
            """select trained_as_of, 'trained (data up to)', model_version from mlpipe.models
               where job = %(job)s and trained_as_of between %(start)s and %(end)s
               union all
               select h.changed_at::date, case when h.share is null then h.alias else 'rollout' end,
                      coalesce(m.model_version, p.model_version, 'none')
               from mlpipe.alias_history h left join mlpipe.models m on m.model_id = h.model_id
               left join mlpipe.models p on p.model_id = h.previous_model_id
               where h.job = %(job)s and h.changed_at::date between %(start)s and %(end)s""",
            w.params,
        )
    ]
    served = [
        {"day": day.isoformat(), "lane": "served", "version": version}
        for day, version in conn.execute(
            """select p.as_of, m.model_version
               from mlpipe.partitions p join mlpipe.runs r using (run_id)
               join mlpipe.models m using (model_id)
               where p.job = %(job)s and p.kind = 'published' and p.as_of between %(start)s and %(end)s""",
            w.params,
        )
    ]
    changes = conn.execute(
        """select h.changed_at::timestamp(0), h.alias, m.model_version, p.model_version,
                  to_char(100 * h.share, 'FM990"%%"'), h.changed_by, h.reason
           from mlpipe.alias_history h left join mlpipe.models m on m.model_id = h.model_id
           left join mlpipe.models p on p.model_id = h.previous_model_id
           where h.job = %(job)s order by h.changed_at desc limit 20""",
        w.params,
    ).fetchall()
    parts = []
    if events or served:
        parts.append(_figure("timeline", charts.timeline(events, served)))
    else:
        parts.append(_empty(f"No model trained, alias changed or day served between {w.start} and {w.end}."))
    if changes:
        parts.append(_table(["changed at", "alias", "to", "from", "rollout share", "by", "reason"], changes))
    return "".join(parts)
