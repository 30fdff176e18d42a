"""The projection chart's level labels never sit on top of each other."""

from __future__ import annotations

import datetime as dt

import pytest

from billing.charts import ProjectionPoint, projection_history_figure


def _labels(previous: int, minimum: int) -> dict[str, dict]:
    figure = projection_history_figure(
        points=[ProjectionPoint(day=dt.date(2026, 11, 3), to_date_minor=100, projected_minor=900)],
        currency="USD",
        period_start=dt.date(2026, 11, 1),
        last_day=dt.date(2026, 11, 30),
        previous_total_minor=previous,
        minimum_commitment_minor=minimum,
    )
    return {n["text"].split(" $")[0]: n for n in figure["layout"]["annotations"]}


@pytest.mark.parametrize(
    ("previous", "minimum"), [(50_000, 50_000), (50_000, 49_000), (49_000, 50_000)]
)
def test_previous_period_and_minimum_commitment_labels_do_not_overlap(previous, minimum):
    labels = _labels(previous, minimum)
    before, commitment = labels["Previous period"], labels["Minimum commitment"]
    # At opposite ends of the plot, each anchored inward.
    assert (before["x"], before["xanchor"]) == ("2026-11-01", "left")
    assert (commitment["x"], commitment["xanchor"]) == ("2026-11-30", "right")
    # Equal or close levels: one label above its line, the other below.
    if minimum <= previous:
        assert (before["yanchor"], commitment["yanchor"]) == ("bottom", "top")
