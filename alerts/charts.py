"""The alert page's figure: the meter's daily usage with the expected weekday band. A pure
function (data in, plotly figure dict out), in the style of metering.charts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from alerts.selectors import AlertSeriesPoint
from metering.charts import CURRENT, FONT, LIMIT, PREVIOUS, decimal_text

BAND = "rgba(121, 174, 200, 0.25)"  # the admin's light blue, translucent


def _num(value) -> float | None:
    return None if value is None else float(value)


def alert_band_figure(
    points: Sequence[AlertSeriesPoint], *, alert_day: date, title: str, unit: str, zone: str
) -> dict:
    """Days are the account's local days (`zone`, an IANA name), and the axis says so: plotly
    would otherwise read the ISO dates as UTC days. Every hover names the unit."""
    days = [p.day.isoformat() for p in points]
    local = f"({zone})"
    highs = [_num(p.high) for p in points]
    lows = [_num(p.low) for p in points]
    return {
        "data": [
            {
                "type": "scatter",
                "x": days,
                "y": lows,
                "mode": "lines",
                "line": {"width": 0},
                "hoverinfo": "skip",
                "showlegend": False,
                "name": "band low",
            },
            {
                "type": "scatter",
                "x": days,
                "y": highs,
                "mode": "lines",
                "line": {"width": 0},
                "fill": "tonexty",
                "fillcolor": BAND,
                "name": "Expected band (same weekday)",
                "customdata": [f"{decimal_text(p.low)} – {decimal_text(p.high)}" for p in points],
                "hovertemplate": "%{x} "
                + local
                + ": expected %{customdata} "
                + unit
                + "<extra></extra>",
            },
            {
                "type": "scatter",
                "x": days,
                "y": [_num(p.median) for p in points],
                "mode": "lines",
                "line": {"color": PREVIOUS, "dash": "dot"},
                "name": "Weekday median",
                "customdata": [decimal_text(p.median) for p in points],
                "hovertemplate": "%{x} "
                + local
                + ": median %{customdata} "
                + unit
                + "<extra></extra>",
            },
            {
                "type": "bar",
                "x": days,
                "y": [_num(p.value) for p in points],
                "marker": {"color": [LIMIT if p.day == alert_day else CURRENT for p in points]},
                "name": f"Usage ({unit})",
                "customdata": [decimal_text(p.value) for p in points],
                "hovertemplate": "%{x} " + local + ": %{customdata} " + unit + "<extra></extra>",
            },
        ],
        "layout": {
            "title": {"text": f"{title} {local}"},
            "font": FONT,
            "height": 360,
            "margin": {"l": 60, "r": 20, "t": 60, "b": 40},
            "legend": {"orientation": "h", "y": -0.25},
            "xaxis": {"type": "date", "title": {"text": f"Local day {local}"}},
            "yaxis": {"title": {"text": unit}, "rangemode": "tozero"},
            "bargap": 0.3,
        },
    }
