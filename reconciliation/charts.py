"""Plotly figures for the mismatch page: pure functions, data in, figure out (plain dicts, as in
metering.charts; values are exact Decimals up to here and floats only for drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from metering.charts import FONT, decimal_text

OURS_MINUS_PROVIDER = "#ba2121"
OURS_MINUS_REPORTED = "#d08c00"
REPORTED_MINUS_PROVIDER = "#417690"


def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def mismatch_days_figure(days: Sequence, *, unit: str, boundaries: Sequence[str] = ()) -> dict:
    """Bars of the three deltas per UTC day (`days`: rows with .day, .delta, .delta_reported,
    .delta_provider as Decimals or None), with the period's boundaries as dotted lines."""
    x = [row.day.isoformat() for row in days]
    traces = []
    for name, attr, colour in (
        ("ours − provider", "delta", OURS_MINUS_PROVIDER),
        ("ours − reported", "delta_reported", OURS_MINUS_REPORTED),
        ("reported − provider", "delta_provider", REPORTED_MINUS_PROVIDER),
    ):
        values = [getattr(row, attr) for row in days]
        traces.append(
            {
                "type": "bar",
                "name": name,
                "x": x,
                "y": [_num(v) for v in values],
                "marker": {"color": colour},
                "text": [f"{decimal_text(v)} {unit}".strip() for v in values],
                "hovertemplate": "%{x}: %{text}<extra>" + name + "</extra>",
                "textposition": "none",
            }
        )
    shapes = [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": at,
            "x1": at,
            "y0": 0,
            "y1": 1,
            "line": {"dash": "dot", "color": "#888888", "width": 1},
        }
        for at in boundaries
    ]
    return {
        "data": traces,
        "layout": {
            "title": {"text": f"Differences per UTC day ({unit or 'units'})"},
            "barmode": "group",
            "height": 320,
            "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
            "font": FONT,
            "legend": {"orientation": "h", "y": 1.12},
            "xaxis": {"type": "date", "tickformat": "%b %d"},
            "yaxis": {"title": {"text": unit or "units"}, "zeroline": True},
            "shapes": shapes,
        },
    }
