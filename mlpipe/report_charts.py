"""Chart builders for the monitoring report: Altair specs rendered to inline SVG (no JavaScript, no
network). Each takes plain records (lists of dicts with ISO dates) and returns an Altair chart."""

from __future__ import annotations

import altair as alt
import vl_convert

WIDTH = 620
SMALL_WIDTH = 380
HEIGHT = 200
LEVEL_COLORS = alt.Scale(domain=["ok", "warn", "fail"], range=["#4c956c", "#e9a23b", "#c8553d"])
OUTCOME_COLORS = alt.Scale(
    domain=["published", "succeeded", "gate failed", "failed", "abandoned", "running"],
    range=["#4c78a8", "#72b7b2", "#e9a23b", "#c8553d", "#9d755d", "#bab0ac"],
)


def svg(chart: alt.TopLevelMixin) -> str:
    """The chart as an SVG document fragment (vl-convert runs Vega without a browser)."""
    return vl_convert.vegalite_to_svg(chart.to_dict())


def _day(title: str = "scored day") -> alt.X:
    return alt.X("day:T", title=title, scale=alt.Scale(type="utc"), axis=alt.Axis(format="%b %d"))


def volumes(rows: list[dict]) -> alt.VConcatChart:
    """Population and rows scored per run (lines), rows quarantined (bars) below."""
    data = alt.Data(values=rows)
    counts = (
        alt.Chart(data)
        .transform_fold(["population", "scored"], as_=["measure", "rows"])
        .mark_line(point=True)
        .encode(_day(""), alt.Y("rows:Q", title="rows"), alt.Color("measure:N", title=None))
        .properties(width=WIDTH, height=HEIGHT, title="Population and rows scored")
    )
    quarantined = (
        alt.Chart(data)
        .mark_bar(color="#c8553d")
        .encode(_day(), alt.Y("quarantined:Q", title="rows"))
        .properties(width=WIDTH, height=90, title="Rows quarantined")
    )
    return alt.vconcat(counts, quarantined)


def durations(rows: list[dict]) -> alt.Chart:
    """Each scoring run's duration, coloured by its outcome (published, gate failed, failed...)."""
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_circle(size=70, opacity=0.9)
        .encode(
            _day(),
            alt.Y("duration_s:Q", title="seconds"),
            alt.Color("outcome:N", scale=OUTCOME_COLORS, title="run"),
        )
        .properties(width=WIDTH, height=HEIGHT, title="Scoring run duration and outcome")
    )


def score_quantiles(rows: list[dict]) -> alt.LayerChart:
    """Per scored day the score's 10th-90th percentile (bar), median (dot) and mean (tick), over the
    same figures of the training reference (grey band and dashed median)."""
    data = alt.Data(values=rows)
    training = alt.Chart(data).transform_filter("datum.source == 'training'")
    day = alt.Chart(data).transform_filter("datum.source == 'scored day'")
    band = training.mark_area(opacity=0.35, color="#999999", interpolate="step-after").encode(
        _day(), alt.Y("p10:Q", title="score"), alt.Y2("p90:Q")
    )
    median = training.mark_line(color="#777777", strokeDash=[5, 4], interpolate="step-after").encode(
        _day(), alt.Y("p50:Q")
    )
    spread = day.mark_rule(color="#4c78a8", strokeWidth=2, opacity=0.45).encode(
        _day(), alt.Y("p10:Q"), alt.Y2("p90:Q")
    )
    middle = day.mark_circle(color="#1f4e79", size=40, opacity=1).encode(_day(), alt.Y("p50:Q"))
    mean = day.mark_tick(color="#c8553d", thickness=2, size=10).encode(_day(), alt.Y("mean:Q"))
    return (band + median + spread + middle + mean).properties(
        width=WIDTH,
        height=HEIGHT,
        title="Score per day: 10th-90th percentile (bar), median (dot), mean (red tick)",
    )


def distribution(feature: str, level: str, rows: list[dict]) -> alt.Chart:
    """One input's shares per reference bin: training against the day."""
    order = list(dict.fromkeys(r["bin"] for r in rows))
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(
            alt.X("bin:N", sort=order, title=None, axis=alt.Axis(labelAngle=-40, labelLimit=110)),
            alt.XOffset("source:N", sort=["training", "day"]),
            alt.Y("share:Q", title="share of rows", axis=alt.Axis(format="%")),
            alt.Color("source:N", sort=["training", "day"], scale=alt.Scale(range=["#999999", "#4c78a8"])),
        )
        .properties(width=SMALL_WIDTH, height=160, title=f"{feature} ({level})")
    )


def performance(rows: list[dict], title: str) -> alt.LayerChart:
    """Realized AUC with its 95% interval and the estimated AUC per day, coloured by `series`."""
    data = alt.Data(values=rows)
    color = alt.Color("series:N", title=None)
    band = (
        alt.Chart(data)
        .transform_filter("datum.roc_auc_lo != null")
        .mark_area(opacity=0.2)
        .encode(_day(), alt.Y("roc_auc_lo:Q", title="ROC AUC"), alt.Y2("roc_auc_hi:Q"), color)
    )
    figure = alt.StrokeDash(
        "figure:N",
        title=None,
        scale=alt.Scale(domain=["realized", "estimated"], range=[[1, 0], [6, 3]]),
        legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555555"),
    )
    lines = (
        alt.Chart(data)
        .transform_fold(["realized", "estimated"], as_=["figure", "value"])
        .transform_filter("datum.value != null")
        .mark_line(strokeWidth=1.6)
        .encode(
            _day(),
            alt.Y("value:Q", title="ROC AUC", scale=alt.Scale(zero=False)),
            color,
            figure,
            alt.Detail("series:N"),
        )
    )
    points = (
        alt.Chart(data)
        .transform_filter("datum.realized != null")
        .mark_circle(size=14, opacity=1)
        .encode(_day(), alt.Y("realized:Q"), color)
    )
    return (band + lines + points).properties(width=WIDTH, height=HEIGHT + 40, title=title)


def calibration(rows: list[dict], title: str) -> alt.LayerChart:
    """Mean score against the observed positive rate per score bin, beside the diagonal."""
    diagonal = (
        alt.Chart(alt.Data(values=[{"x": 0, "y": 0}, {"x": 1, "y": 1}]))
        .mark_line(color="#999999", strokeDash=[4, 4])
        .encode(alt.X("x:Q"), alt.Y("y:Q"))
    )
    base = alt.Chart(alt.Data(values=rows)).encode(
        alt.X("mean_score:Q", title="mean score", scale=alt.Scale(domain=[0, 1])),
        alt.Y("positive_rate:Q", title="positive rate", scale=alt.Scale(domain=[0, 1])),
    )
    line = base.mark_line(color="#4c78a8")
    points = base.mark_circle(color="#4c78a8", opacity=0.9).encode(
        alt.Size("n:Q", title="rows", scale=alt.Scale(range=[20, 400]))
    )
    return (diagonal + line + points).properties(width=SMALL_WIDTH, height=SMALL_WIDTH - 60, title=title)


def timeline(events: list[dict], served: list[dict]) -> alt.LayerChart:
    """Model versions trained, alias changes, and which version each published day served."""
    lanes = alt.Y("lane:N", title=None, sort=["trained (data up to)", "champion", "challenger", "served"])
    served_chart = (
        alt.Chart(alt.Data(values=served))
        .mark_tick(thickness=3, size=18)
        .encode(_day("day"), lanes, alt.Color("version:N", title="model version"))
    )
    base = alt.Chart(alt.Data(values=events)).encode(_day("day"), lanes)
    marks = base.mark_point(filled=True, size=90, shape="diamond").encode(alt.Color("version:N"))
    labels = base.mark_text(dy=-12, fontSize=10).encode(alt.Text("version:N"))
    return (
        (served_chart + marks + labels)
        .properties(width=WIDTH, height=170, title="Model versions and alias changes")
        .configure_legend(orient="bottom")
        .configure_view(clip=False)
    )
