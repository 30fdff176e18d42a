"""The forecast and the wording, as pure functions (no database)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from billing.explain import humanize_quantity, short_date
from billing.projection import (
    change_percent,
    forecast_remaining,
    history_window,
    places_of,
    weekday_means,
)

D = dt.date


def _four_weeks(weekday: int | str, weekend: int | str) -> dict[dt.date, Decimal]:
    first = D(2024, 2, 14)
    return {
        first + dt.timedelta(days=i): Decimal(
            weekend if (first + dt.timedelta(days=i)).weekday() >= 5 else weekday
        )
        for i in range(28)
    }


def test_weekday_means_average_each_weekday_over_its_own_days():
    history = _four_weeks(10, 2)
    history[D(2024, 2, 14)] = Decimal(30)  # one busy Wednesday among four

    means = weekday_means(history)

    assert means[2] == Decimal(15)  # (30 + 10 + 10 + 10) / 4
    assert means[0] == means[4] == Decimal(10)
    assert means[5] == means[6] == Decimal(2)


def test_a_weekday_missing_from_the_history_takes_the_mean_of_all_days():
    history = {D(2024, 3, 11): Decimal(4), D(2024, 3, 12): Decimal(8)}  # Mon, Tue

    means = weekday_means(history)

    assert (means[0], means[1]) == (Decimal(4), Decimal(8))
    assert means[3] == means[6] == Decimal(6)
    assert weekday_means({}) == dict.fromkeys(range(7), Decimal(0))


def test_forecast_adds_each_remaining_days_weekday_mean_and_tops_up_today():
    means = weekday_means(_four_weeks(10, 2))
    wednesday = D(2024, 3, 13)

    running = forecast_remaining(
        means=means, on=wednesday, on_so_far=Decimal(4), on_complete=False, end_date=D(2024, 4, 1)
    )
    complete = forecast_remaining(
        means=means, on=wednesday, on_so_far=Decimal(4), on_complete=True, end_date=D(2024, 4, 1)
    )
    busy_today = forecast_remaining(
        means=means, on=wednesday, on_so_far=Decimal(25), on_complete=False, end_date=D(2024, 4, 1)
    )

    assert running == Decimal(6 + 12 * 10 + 6 * 2)
    assert complete == Decimal(12 * 10 + 6 * 2)
    assert busy_today == complete  # today past its mean adds nothing, never less than nothing
    last_day = forecast_remaining(
        means=means,
        on=D(2024, 3, 31),
        on_so_far=Decimal(0),
        on_complete=True,
        end_date=D(2024, 4, 1),
    )
    assert last_day == Decimal(0)


def test_history_window_starts_at_the_first_day_with_usage():
    daily = {
        D(2024, 3, 8): Decimal(0),
        D(2024, 3, 9): Decimal(0),
        D(2024, 3, 10): Decimal(3),
        D(2024, 3, 11): Decimal(0),
        D(2024, 3, 12): Decimal(5),
    }

    assert history_window(daily) == {
        D(2024, 3, 10): Decimal(3),
        D(2024, 3, 11): Decimal(0),
        D(2024, 3, 12): Decimal(5),
    }
    assert history_window({D(2024, 3, 8): Decimal(0), D(2024, 3, 9): None}) == {}


def test_forecast_precision_follows_the_data():
    assert places_of(Decimal("120"), Decimal("7.000000000000")) == 0
    assert places_of(Decimal("1.25"), Decimal("0.5"), None) == 2
    assert places_of(Decimal("1E-20")) == 12


def test_change_percent_has_one_decimal_rounded_half_up_and_needs_a_base():
    assert change_percent(current_minor=624_900, base_minor=616_900) == Decimal("1.3")
    assert change_percent(current_minor=100, base_minor=80) == Decimal("25.0")
    assert change_percent(current_minor=2, base_minor=3) == Decimal("-33.3")
    assert change_percent(current_minor=1_001, base_minor=2_000) == Decimal("-50.0")  # -49.95
    assert change_percent(current_minor=500, base_minor=0) is None
    assert change_percent(current_minor=500, base_minor=None) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("12400000", "12.4M"),
        ("9400000", "9.4M"),
        ("1000000", "1M"),
        ("18149999", "18.1M"),
        ("18150000", "18.2M"),
        ("999960", "1M"),
        ("45300", "45.3K"),
        ("10000", "10K"),
        ("9999", "9,999"),
        ("1234.567", "1,234.57"),
        ("0.5", "0.5"),
        ("0", "0"),
        ("2500000000", "2.5B"),
        ("-12400000", "-12.4M"),
    ],
)
def test_quantities_are_humanised(value, text):
    assert humanize_quantity(Decimal(value)) == text


def test_dates_are_short_month_and_day():
    assert short_date(D(2024, 3, 31)) == "Mar 31"
    assert short_date(D(2024, 2, 9)) == "Feb 9"
