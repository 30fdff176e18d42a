"""Local days as UTC intervals: DST days, half- and quarter-hour zones, agreement with SQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection

from metering import periods


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_new_york_spring_forward_day_lasts_23_hours():
    start, end = periods.day_bounds_utc(date(2024, 3, 10), "America/New_York")

    assert (start, end) == (utc(2024, 3, 10, 5), utc(2024, 3, 11, 4))
    assert periods.day_length(date(2024, 3, 10), "America/New_York") == timedelta(hours=23)


def test_new_york_fall_back_day_lasts_25_hours():
    start, end = periods.day_bounds_utc(date(2024, 11, 3), "America/New_York")

    assert (start, end) == (utc(2024, 11, 3, 4), utc(2024, 11, 4, 5))
    assert end - start == timedelta(hours=25)


def test_kolkata_days_start_at_half_past_six_pm_utc():
    start, end = periods.day_bounds_utc(date(2024, 1, 1), "Asia/Kolkata")

    assert (start, end) == (utc(2023, 12, 31, 18, 30), utc(2024, 1, 1, 18, 30))


def test_kathmandu_days_start_at_quarter_past_six_pm_utc():
    start, end = periods.day_bounds_utc(date(2024, 1, 1), "Asia/Kathmandu")

    assert (start, end) == (utc(2023, 12, 31, 18, 15), utc(2024, 1, 1, 18, 15))


def test_local_date_flips_exactly_at_the_kathmandu_boundary():
    assert periods.local_date(utc(2024, 1, 1, 18, 14, 59), "Asia/Kathmandu") == date(2024, 1, 1)
    assert periods.local_date(utc(2024, 1, 1, 18, 15), "Asia/Kathmandu") == date(2024, 1, 2)


def test_a_day_whose_midnight_does_not_exist_starts_at_the_transition():
    # Chile springs forward at 24:00 on 2024-09-07: the clock goes from 23:59:59 to 01:00.
    start, end = periods.day_bounds_utc(date(2024, 9, 8), "America/Santiago")

    assert start == utc(2024, 9, 8, 4)
    assert periods.local_date(start, "America/Santiago") == date(2024, 9, 8)
    assert periods.local_date(start - timedelta(seconds=1), "America/Santiago") == date(2024, 9, 7)
    assert end - start == timedelta(hours=23)


def test_days_bounds_cover_a_run_of_days_and_reject_reversed_ranges():
    bounds = periods.LocalDays.of(
        first=date(2024, 11, 1), end=date(2024, 11, 5), timezone="America/New_York"
    )

    assert bounds.start_utc == utc(2024, 11, 1, 4)
    assert bounds.end_utc == utc(2024, 11, 5, 5)
    assert bounds.end_utc - bounds.start_utc == timedelta(days=4, hours=1)
    assert len(bounds.days) == 4
    with pytest.raises(ValueError, match="end must not be before first"):
        periods.days_bounds_utc(date(2024, 1, 2), date(2024, 1, 1), "UTC")


def test_hours_are_utc_hours_whatever_the_offset_of_the_instant():
    instant = datetime.fromisoformat("2024-01-01T23:50:00+05:45")

    assert periods.hour_floor(instant) == utc(2024, 1, 1, 18)
    assert list(periods.iter_hours(utc(2024, 1, 1, 22, 30), utc(2024, 1, 2, 1))) == [
        utc(2024, 1, 1, 22),
        utc(2024, 1, 1, 23),
        utc(2024, 1, 2, 0),
    ]
    with pytest.raises(ValueError, match="timezone-aware"):
        periods.hour_floor(datetime(2024, 1, 1))


ZONES_AND_DAYS = [
    ("UTC", date(2024, 2, 29)),
    ("America/New_York", date(2024, 3, 10)),
    ("America/New_York", date(2024, 11, 3)),
    ("Europe/Berlin", date(2024, 3, 31)),
    ("Europe/Berlin", date(2024, 10, 27)),
    ("Asia/Kolkata", date(2024, 6, 1)),
    ("Asia/Kathmandu", date(2024, 6, 1)),
    ("Australia/Lord_Howe", date(2024, 4, 7)),
    ("America/Santiago", date(2024, 9, 8)),
    ("Pacific/Kiritimati", date(2024, 1, 1)),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("zone", "day"), ZONES_AND_DAYS)
def test_day_bounds_agree_with_postgresql_local_dates(zone, day):
    """The rollup buckets days with SQL (AT TIME ZONE); periods must draw the same lines."""
    start, end = periods.day_bounds_utc(day, zone)
    probes = [start - timedelta(microseconds=1), start, end - timedelta(microseconds=1), end]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (t AT TIME ZONE %s)::date FROM unnest(%s::timestamptz[]) AS t",
            [zone, probes],
        )
        sql_dates = [row[0] for row in cursor.fetchall()]

    assert sql_dates == [day - timedelta(days=1), day, day, day + timedelta(days=1)]


def test_billing_uses_metering_local_midnight_even_when_a_dst_gap_does_not_start_at_midnight():
    # One implementation of local midnight: billing's name for it is metering's function, so a
    # period boundary and a daily-rollup boundary cannot disagree.
    from billing import periods as billing_periods

    assert billing_periods.local_midnight_utc is periods.day_start_utc
    assert billing_periods.local_date is periods.local_date


def test_decimal_text_is_exact_beyond_28_digits_and_shared():
    from decimal import Decimal

    from billing.pricing import decimal_text as billing_text
    from metering.api.usage import decimal_str
    from metering.charts import decimal_text as chart_text
    from metering.decimals import decimal_text

    value = Decimal("12345678901234567890123456789012.123456")
    assert decimal_text(value) == "12345678901234567890123456789012.123456"
    assert chart_text(value) == decimal_str(value) == billing_text(value) == decimal_text(value)
    assert [decimal_text(Decimal(v)) for v in ("1E+2", "1.500", "-0.00", "0E-10")] == [
        "100",
        "1.5",
        "0",
        "0",
    ]
