"""Plotly figures for the account usage page: pure functions, data in, figure out.

A figure here is plotly's figure as a plain dict (`{"data": [...], "layout": {...}}`), the
same JSON plotly.js draws, rendered with `plotly.io.to_html(fig, validate=False)`. Building it
through `plotly.graph_objects` validates every property on every assignment, which cost about
250 ms of the page's time for three figures; the tests validate these dicts with
`go.Figure(fig)` instead, once.

Values are exact Decimals up to here; plotly draws floats, so they are converted for drawing
only, and each hover shows the exact decimal text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal

from metering import decimals
from metering.dashboard_selectors import ADDITIVE, Breakdown, MeterPanel
from metering.rollup_selectors import group_label

CURRENT = "#417690"  # the admin's own blue
PREVIOUS = "#888888"
LIMIT = "#ba2121"  # the admin's error red
INCLUDED = "#d08c00"
# A qualitative palette for dimension values; "other" is always grey.
PALETTE = (
    "#417690",
    "#79aec8",
    "#e0a800",
    "#5b8c5a",
    "#b85c38",
    "#8e6c8a",
    "#2e5266",
    "#c9b79c",
    "#6e7f80",
    "#d98880",
)
OTHER = "#bbbbbb"

ROW_HEIGHT = 220
TOP_MARGIN = 100  # the title, the legend under it, then the first row's title
ROW_GAP = 70  # pixels between stacked rows (room for the next row's title)
FONT = {"family": "-apple-system, 'Segoe UI', system-ui, Roboto, sans-serif", "size": 12}

Figure = dict


def decimal_text(value: Decimal | None) -> str:
    """Exact, without exponent or trailing zeros: 1.500000000000 -> 1.5, 1E+2 -> 100."""
    return "–" if value is None else decimals.decimal_text(value)


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def unit_label(panel_or_unit) -> str:
    unit = panel_or_unit if isinstance(panel_or_unit, str) else panel_or_unit.meter.unit
    return unit or "units"


def meter_title(panel: MeterPanel) -> str:
    meter = panel.meter
    how = meter.get_aggregation_display().lower()
    return f"<b>{meter.name or meter.code}</b> · {how} ({unit_label(panel)})"


def _axis_names(row: int) -> tuple[str, str, str, str]:
    """("x2", "y2", "xaxis2", "yaxis2") for row 2; row 1 is plain x/y."""
    suffix = "" if row == 1 else str(row)
    return f"x{suffix}", f"y{suffix}", f"xaxis{suffix}", f"yaxis{suffix}"


def _rows_layout(*, title: str, titles: Sequence[str], units: Sequence[str]) -> dict:
    """A layout of len(titles) stacked rows, each with its own axes, title and unit."""
    rows = max(len(titles), 1)
    plot_height = ROW_HEIGHT * rows + ROW_GAP * (rows - 1)
    height = TOP_MARGIN + plot_height + 40
    gap = ROW_GAP / plot_height
    step = (1 + gap) / rows
    layout: dict = {
        "title": {
            "text": title,
            "x": 0,
            "xanchor": "left",
            "y": 1,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 10, "l": 4},
            "font": {"size": 15},
        },
        "height": height,
        "margin": {"l": 70, "r": 20, "t": TOP_MARGIN, "b": 40},
        "font": FONT,
        "plot_bgcolor": "white",
        "paper_bgcolor": "white",
        # Above the first row's title, below the figure's.
        "legend": {
            "orientation": "h",
            "x": 0,
            "y": 1 + 34 / plot_height,
            "xanchor": "left",
            "yanchor": "bottom",
        },
        "hovermode": "closest",
        "barmode": "overlay",
        "annotations": [],
    }
    for index in range(rows):
        row = index + 1
        x, _y, xaxis, yaxis = _axis_names(row)
        top = 1 - index * step
        bottom = max(top - (step - gap), 0)
        layout[xaxis] = {
            "type": "date",
            "tickformat": "%b %d",
            "showgrid": False,
            "linecolor": "#ccc",
            "anchor": f"y{'' if row == 1 else row}",
            "domain": [0, 1],
        }
        if row > 1:
            layout[xaxis]["matches"] = "x"
        layout[yaxis] = {
            "title": {"text": units[index] if index < len(units) else ""},
            "gridcolor": "#eee",
            "zerolinecolor": "#ccc",
            "rangemode": "tozero",
            "anchor": x,
            "domain": [bottom, top],
        }
        if index < len(titles):
            layout["annotations"].append(
                {
                    "text": titles[index],
                    "xref": "paper",
                    "yref": "paper",
                    "x": 0,
                    "y": top,
                    "xanchor": "left",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"size": 13},
                }
            )
    return layout


def daily_usage_figure(
    panels: Sequence[MeterPanel],
    *,
    title: str,
    day_links: Mapping[int, Mapping[date, str]] | None = None,
) -> Figure:
    """Per meter, one row: bars for each day of this period, a dotted line for the same day of
    the previous period (day 1 against day 1). A bar's customdata is the link to that day's raw
    events, which the page's click handler follows."""
    day_links = day_links or {}
    data = []
    for row, panel in enumerate(panels, start=1):
        x_name, y_name, _, _ = _axis_names(row)
        days = sorted(panel.current)
        links = day_links.get(panel.meter.pk, {})
        unit = unit_label(panel)
        x = [d.isoformat() for d in days]
        data.append(
            {
                "type": "bar",
                "x": x,
                "y": [_num(panel.current[d]) for d in days],
                "xaxis": x_name,
                "yaxis": y_name,
                "name": "This period",
                "legendgroup": "current",
                "showlegend": row == 1,
                "marker": {"color": CURRENT},
                "customdata": [links.get(d, "") for d in days],
                "hovertext": [
                    f"{d:%a %d %b %Y}: {decimal_text(panel.current[d])} {unit}"
                    + ("<br>Click for the day's events" if links.get(d) else "")
                    for d in days
                ],
                "hoverinfo": "text",
            }
        )
        previous = panel.previous[: len(days)]
        data.append(
            {
                "type": "scatter",
                "x": x[: len(previous)],
                "y": [_num(value) for _day, value in previous],
                "xaxis": x_name,
                "yaxis": y_name,
                "name": "Previous period (same day of the period)",
                "legendgroup": "previous",
                "showlegend": row == 1,
                "mode": "lines+markers",
                "line": {"color": PREVIOUS, "dash": "dot", "width": 2},
                "marker": {"size": 4},
                "hovertext": [
                    f"Previous period, {day:%a %d %b %Y}: {decimal_text(value)} {unit}"
                    for day, value in previous
                ],
                "hoverinfo": "text",
            }
        )
    layout = _rows_layout(
        title=title,
        titles=[meter_title(p) for p in panels],
        units=[unit_label(p) for p in panels],
    )
    return {"data": data, "layout": layout}


def breakdown_figure(breakdown: Breakdown, *, title: str) -> Figure:
    """Daily usage of one meter by one dimension: stacked bars for count and sum, lines for
    the others (a max, a latest value or distinct counts do not add up across values)."""
    series = breakdown.series
    additive = series.aggregation in ADDITIVE
    x = [p.day.isoformat() for p in series.points]
    unit = unit_label(series.unit)
    data = []
    colours = iter(PALETTE * 10)
    for group, group_total in series.group_totals.items():
        colour = OTHER if group == "other" else next(colours)
        label = group_label(group)
        values = [p.groups.get(group) for p in series.points]
        trace = {
            "x": x,
            "y": [_num(v) for v in values],
            "name": f"{label} ({decimal_text(group_total)} {unit})",
            "hovertext": [
                f"{label}, {p.day:%a %d %b}: {decimal_text(v)} {unit}"
                for p, v in zip(series.points, values, strict=True)
            ],
            "hoverinfo": "text",
        }
        if additive:
            trace.update(type="bar", marker={"color": colour})
        else:
            trace.update(type="scatter", mode="lines+markers", line={"color": colour})
        data.append(trace)
    layout = _rows_layout(title=title, titles=[], units=[unit])
    # The legend (one entry per value, with its total) goes to the right, so no room is needed
    # for it above the plot.
    layout.update(barmode="stack", height=60 + ROW_HEIGHT + 120)
    layout["legend"] = {"orientation": "v", "x": 1.01, "y": 1, "xanchor": "left"}
    layout["margin"].update(t=60, r=220)
    return {"data": data, "layout": layout}


def cumulative_figure(panels: Sequence[MeterPanel], *, title: str) -> Figure:
    """Per meter, usage from the period's start through each day, with the account's limit
    and the plan's included units as dashed lines when they exist."""
    data = []
    shown_legend: set[str] = set()
    for row, panel in enumerate(panels, start=1):
        x_name, y_name, _, _ = _axis_names(row)
        days = sorted(panel.to_date)
        x = [d.isoformat() for d in days]
        unit = unit_label(panel)
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": [_num(panel.to_date[d]) for d in days],
                "xaxis": x_name,
                "yaxis": y_name,
                "name": "Usage to date",
                "legendgroup": "usage",
                "showlegend": "usage" not in shown_legend,
                "mode": "lines+markers",
                "line": {"color": CURRENT, "width": 3},
                "marker": {"size": 5},
                "fill": "tozeroy",
                "fillcolor": "rgba(65,118,144,0.12)",
                "hovertext": [
                    f"Through {d:%a %d %b}: {decimal_text(panel.to_date[d])} {unit}" for d in days
                ],
                "hoverinfo": "text",
            }
        )
        shown_legend.add("usage")
        for key, name, value, colour in (
            ("limit", "Account limit", panel.limit, LIMIT),
            ("included", "Included in plan", panel.included_units, INCLUDED),
        ):
            if value is None or not x:
                continue
            data.append(
                {
                    "type": "scatter",
                    "x": [x[0], x[-1]],
                    "y": [_num(value), _num(value)],
                    "xaxis": x_name,
                    "yaxis": y_name,
                    "name": name,
                    "legendgroup": key,
                    "showlegend": key not in shown_legend,
                    "mode": "lines",
                    "line": {"color": colour, "dash": "dash", "width": 2},
                    "hovertext": [f"{name}: {decimal_text(value)} {unit}"] * 2,
                    "hoverinfo": "text",
                }
            )
            shown_legend.add(key)
    layout = _rows_layout(
        title=title,
        titles=[meter_title(p) for p in panels],
        units=[unit_label(p) for p in panels],
    )
    return {"data": data, "layout": layout}
