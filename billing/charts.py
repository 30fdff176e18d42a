"""Plotly figures for the projected-invoice panel: pure functions, data in, figure out.

Figures are plain dicts (`{"data": [...], "layout": {...}}`), the JSON plotly.js draws, as in
metering.charts. Amounts go to plotly as exact decimal strings in currency units ("6249.00"):
plotly.js reads numeric strings as numbers, so nothing here passes through a float, and each
hover shows the amount formatted exactly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from billing.money import format_money, from_minor_units

PROJECTED = "#417690"  # the admin's own blue
TO_DATE = "#79aec8"
PREVIOUS = "#888888"
MINIMUM = "#d08c00"
LIVE = "#ba2121"
FONT = {"family": "-apple-system, 'Segoe UI', system-ui, Roboto, sans-serif", "size": 12}

Figure = dict


@dataclass(frozen=True)
class ProjectionPoint:
    """One day's projection: a stored snapshot, or the live one computed for the page."""

    day: dt.date
    to_date_minor: int
    projected_minor: int


def _amount(minor: int, currency: str) -> str:
    return f"{from_minor_units(minor, currency):f}"


def _trace(points, *, name, attr, currency, color, dash=None, mode="lines+markers") -> dict:
    return {
        "type": "scatter",
        "mode": mode,
        "name": name,
        "x": [p.day.isoformat() for p in points],
        "y": [_amount(getattr(p, attr), currency) for p in points],
        "text": [format_money(getattr(p, attr), currency) for p in points],
        "hovertemplate": "%{x|%b %-d}: %{text}<extra>" + name + "</extra>",
        "line": {"color": color, **({"dash": dash} if dash else {})},
        "marker": {"color": color, "size": 7},
    }


def _level(
    *,
    y: str,
    color: str,
    label: str,
    first: dt.date,
    last: dt.date,
    at_end: bool = False,
    below: bool = False,
) -> tuple:
    shape = {
        "type": "line",
        "xref": "x",
        "yref": "y",
        "x0": first.isoformat(),
        "x1": last.isoformat(),
        "y0": y,
        "y1": y,
        "line": {"color": color, "width": 1.5, "dash": "dot"},
    }
    note = {
        "x": (last if at_end else first).isoformat(),
        "y": y,
        "xref": "x",
        "yref": "y",
        "text": label,
        "showarrow": False,
        "xanchor": "right" if at_end else "left",
        "yanchor": "top" if below else "bottom",
        "font": {"color": color, "size": 11},
    }
    return shape, note


def projection_history_figure(
    *,
    points: Sequence[ProjectionPoint],
    currency: str,
    period_start: dt.date,
    last_day: dt.date,
    previous_total_minor: int | None = None,
    minimum_commitment_minor: int = 0,
    live: ProjectionPoint | None = None,
    title: str = "",
) -> Figure:
    """How the projected total (and the total so far) moved over the period, day by day, with
    the previous period's total and the minimum commitment as dotted levels. `live` adds the
    projection computed for this page when today has no snapshot yet."""
    points = sorted(points, key=lambda p: p.day)
    data = [
        _trace(points, name="Projected total", attr="projected_minor", currency=currency,
               color=PROJECTED),
        _trace(points, name="Total so far", attr="to_date_minor", currency=currency,
               color=TO_DATE, dash="dash"),
    ]  # fmt: skip
    if live is not None and all(p.day != live.day for p in points):
        data.append(
            _trace(
                [live],
                name="Projected now (not snapshotted yet)",
                attr="projected_minor",
                currency=currency,
                color=LIVE,
                mode="markers",
            )
        )
    shapes, notes = [], []
    if previous_total_minor is not None:
        shape, note = _level(
            y=_amount(previous_total_minor, currency),
            color=PREVIOUS,
            label=f"Previous period {format_money(previous_total_minor, currency)}",
            first=period_start,
            last=last_day,
        )
        shapes.append(shape)
        notes.append(note)
    if minimum_commitment_minor:
        # Its label never lands on the previous period's: at the other end of the line, and
        # on the other side of it (below when it is the lower level, so two equal or close
        # levels get one label above and one below).
        shape, note = _level(
            y=_amount(minimum_commitment_minor, currency),
            color=MINIMUM,
            label=f"Minimum commitment {format_money(minimum_commitment_minor, currency)}",
            first=period_start,
            last=last_day,
            at_end=True,
            below=previous_total_minor is not None
            and minimum_commitment_minor <= previous_total_minor,
        )
        shapes.append(shape)
        notes.append(note)
    if not points and live is None:
        notes.append(
            {
                "text": "No snapshots yet: they are taken daily.",
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
            }
        )
    layout = {
        "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        "font": FONT,
        "height": 320,
        "margin": {"l": 70, "r": 20, "t": 50, "b": 40},
        "hovermode": "x unified",
        "legend": {"orientation": "h", "y": -0.18},
        "xaxis": {
            "type": "date",
            # The whole period, so the chart shows how far into it the projection is.
            "range": [
                f"{(period_start - dt.timedelta(days=1)).isoformat()} 12:00",
                f"{last_day.isoformat()} 12:00",
            ],
            "tickformat": "%b %-d",
        },
        # Amounts arrive as decimal strings; "linear" makes plotly.js read them as numbers.
        "yaxis": {
            "type": "linear",
            "title": {"text": currency},
            "rangemode": "tozero",
            "tickformat": ",.2f",
        },
        "shapes": shapes,
        "annotations": notes,
        "plot_bgcolor": "#fff",
    }
    return {"data": data, "layout": layout}
