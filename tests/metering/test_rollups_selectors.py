"""Reading rollups: series, exact totals, breakdowns by dimension, bounded queries."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from metering.models import Meter
from metering.rollup_selectors import (
    MAX_POINTS,
    UnknownDimension,
    UsageRangeError,
    usage_cumulative,
    usage_daily_by_meter,
    usage_series,
    usage_total,
)
from metering.services import rollups
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert, utc

pytestmark = pytest.mark.django_db

A = Meter.Aggregation


@pytest.fixture
def kolkata():
    return AccountFactory(timezone="Asia/Kolkata")


@pytest.fixture
def spend():
    return MeterFactory(
        code="bytes", aggregation=A.SUM, value_property="n", dimensions=["region"], unit="GB"
    )


def test_daily_series_has_every_local_day_the_total_and_the_period_bounds(kolkata, spend):
    insert(
        event(kolkata, spend, utc(2024, 1, 1, 18, 29), "1.5", properties={"region": "eu"}),
        event(kolkata, spend, utc(2024, 1, 1, 18, 30), "2", properties={"region": "us"}),
        event(kolkata, spend, utc(2024, 1, 3, 5), "4", properties={"region": "ap"}),
    )
    rollups.rollup_drain()

    series = usage_series(
        account=kolkata, meter=spend, start=date(2024, 1, 1), end=date(2024, 1, 5)
    )

    assert [p.day for p in series.points] == [date(2024, 1, d) for d in (1, 2, 3, 4)]
    assert [p.value for p in series.points] == [Decimal("1.5"), Decimal(2), Decimal(4), 0]
    assert series.points[0].start == utc(2023, 12, 31, 18, 30)
    assert series.points[0].end == series.points[1].start == utc(2024, 1, 1, 18, 30)
    assert series.total == Decimal("7.5")
    assert (series.start, series.end) == (utc(2023, 12, 31, 18, 30), utc(2024, 1, 4, 18, 30))
    assert (series.unit, series.aggregation, series.timezone) == ("GB", "sum", "Asia/Kolkata")
    assert series.group_by is None and series.points[0].groups == {}


def test_group_by_shows_the_top_values_and_the_rest_as_other(kolkata, spend):
    t = utc(2024, 1, 2, 6)
    insert(
        event(kolkata, spend, t, "10", properties={"region": "eu"}),
        event(kolkata, spend, t, "3", properties={"region": "us"}),
        event(kolkata, spend, t + timedelta(days=1), "5", properties={"region": "us"}),
        event(kolkata, spend, t + timedelta(days=1), "1", properties={"region": "ap"}),
    )
    rollups.rollup_drain()

    series = usage_series(
        account=kolkata,
        meter=spend,
        start=date(2024, 1, 2),
        end=date(2024, 1, 4),
        group_by="region",
        top=1,
    )

    assert list(series.group_totals) == ["eu", "other"]
    assert series.group_totals == {"eu": Decimal(10), "other": Decimal(9)}
    assert series.points[0].groups == {"eu": Decimal(10), "other": Decimal(3)}
    assert series.points[1].groups == {"other": Decimal(6)}
    assert series.folded is False
    everything = usage_series(
        account=kolkata,
        meter=spend,
        start=date(2024, 1, 2),
        end=date(2024, 1, 4),
        group_by="region",
    )
    assert everything.group_totals == {"eu": Decimal(10), "us": Decimal(8), "ap": Decimal(1)}


def test_unique_count_groups_count_distinct_values_across_merged_groups_and_days(kolkata):
    users = MeterFactory(
        code="users", aggregation=A.UNIQUE_COUNT, value_property="user", dimensions=["plan"]
    )
    t = utc(2024, 1, 2, 6)
    insert(
        *(
            event(kolkata, users, t, unique=f"big{i}", properties={"plan": "team"})
            for i in range(3)
        ),
        event(kolkata, users, t, unique="alice", properties={"plan": "free"}),
        event(kolkata, users, t, unique="alice", properties={"plan": "pro"}),
        event(kolkata, users, t + timedelta(days=1), unique="alice", properties={"plan": "pro"}),
    )
    rollups.rollup_drain()

    series = usage_series(
        account=kolkata,
        meter=users,
        start=date(2024, 1, 2),
        end=date(2024, 1, 4),
        group_by="plan",
        top=1,
    )

    assert series.total == 4
    assert [p.value for p in series.points] == [4, 1]
    # alice is in both "free" and "pro", folded together into "other": one user, not two.
    assert series.group_totals == {"team": 3, "other": 1}
    assert series.points[0].groups == {"team": 3, "other": 1}


def test_hourly_series_uses_utc_hours(kolkata, spend):
    insert(
        event(kolkata, spend, utc(2024, 1, 1, 18, 10), "1"),
        event(kolkata, spend, utc(2024, 1, 1, 18, 50), "2"),
    )
    rollups.rollup_drain()

    series = usage_series(
        account=kolkata,
        meter=spend,
        start=utc(2024, 1, 1, 17),
        end=utc(2024, 1, 1, 20),
        granularity="hour",
    )

    assert [(p.start.hour, p.value) for p in series.points] == [(17, 0), (18, 3), (19, 0)]
    assert series.first_day is None and series.total == 3


def test_max_and_latest_totals_combine_across_days(kolkata):
    peak = MeterFactory(code="peak", aggregation=A.MAX, value_property="n")
    seats = MeterFactory(code="seats", aggregation=A.LATEST, value_property="n")
    insert(
        event(kolkata, peak, utc(2024, 1, 2, 6), "9"),
        event(kolkata, peak, utc(2024, 1, 3, 6), "4"),
        event(kolkata, seats, utc(2024, 1, 2, 6), "9"),
        event(kolkata, seats, utc(2024, 1, 3, 6), "4"),
    )
    rollups.rollup_drain()
    days = {"start": date(2024, 1, 1), "end": date(2024, 1, 5)}

    assert usage_total(account=kolkata, meter=peak, **days) == 9
    assert usage_total(account=kolkata, meter=seats, **days) == 4
    series = usage_series(account=kolkata, meter=seats, **days)
    assert [p.value for p in series.points] == [None, 9, 4, None]


def test_series_says_when_the_rollup_folded_values_into_other(kolkata, spend, settings):
    settings.ROLLUP_MAX_DIMENSION_VALUES = 2
    insert(
        *(
            event(kolkata, spend, utc(2024, 1, 2, 6), "1", properties={"region": f"r{i}"})
            for i in range(4)
        )
    )
    rollups.rollup_drain()

    series = usage_series(
        account=kolkata,
        meter=spend,
        start=date(2024, 1, 2),
        end=date(2024, 1, 3),
        group_by="region",
    )

    assert series.folded is True
    assert series.group_totals == {"r0": 1, "r1": 1, "other": 2}


def test_daily_usage_of_all_meters_in_three_queries(kolkata, spend, django_assert_num_queries):
    calls = MeterFactory(code="calls")
    users = MeterFactory(code="users", aggregation=A.UNIQUE_COUNT, value_property="user")
    insert(
        event(kolkata, spend, utc(2024, 1, 2, 6), "2"),
        event(kolkata, calls, utc(2024, 1, 2, 6)),
        event(kolkata, users, utc(2024, 1, 2, 6), unique="a"),
        event(kolkata, users, utc(2024, 1, 3, 6), unique="a"),
    )
    rollups.rollup_drain()

    with django_assert_num_queries(3):
        usage = usage_daily_by_meter(account=kolkata, first=date(2024, 1, 1), end=date(2024, 1, 4))

    by_code = {u.meter.code: u for u in usage}
    assert by_code["bytes"].days == {
        date(2024, 1, 1): 0,
        date(2024, 1, 2): Decimal(2),
        date(2024, 1, 3): 0,
    }
    assert by_code["calls"].total == 1
    assert by_code["users"].total == 1
    assert list(by_code["users"].days.values()) == [0, 1, 1]


def test_a_series_reads_a_bounded_number_of_queries(kolkata, spend, django_assert_num_queries):
    """One statement for the series and its total, one more for a breakdown: each query is a
    round trip and a plan, and the usage API's budget is 30 ms at p95 (bench/usage.py)."""
    rollups.rollup_drain()
    with django_assert_num_queries(1):
        usage_series(account=kolkata, meter=spend, start=date(2024, 1, 1), end=date(2024, 2, 1))
    with django_assert_num_queries(2):
        usage_series(
            account=kolkata,
            meter=spend,
            start=date(2024, 1, 1),
            end=date(2024, 2, 1),
            group_by="region",
            top=5,
        )


def test_a_unique_count_breakdown_reads_three_queries(kolkata, django_assert_num_queries):
    users = MeterFactory(
        code="users", aggregation=A.UNIQUE_COUNT, value_property="user", dimensions=["region"]
    )
    t = utc(2024, 1, 10, 12)
    insert(
        *(
            event(kolkata, users, t, unique=user, properties={"region": region})
            for user, region in [("u1", "eu"), ("u2", "eu"), ("u1", "us")]
        )
    )
    rollups.rollup_drain()
    with django_assert_num_queries(3):
        series = usage_series(
            account=kolkata,
            meter=users,
            start=date(2024, 1, 1),
            end=date(2024, 2, 1),
            group_by="region",
        )
    assert series.total == 2
    assert series.group_totals == {"eu": 2, "us": 1}
    assert series.folded is False


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": date(2024, 1, 5), "end": date(2024, 1, 5)}, UsageRangeError, "empty"),
        ({"start": date(2024, 1, 1), "end": date(2026, 1, 1)}, UsageRangeError, "at most 400"),
        (
            {"start": utc(2024, 1, 1, 0, 30), "end": utc(2024, 1, 1, 3), "granularity": "hour"},
            UsageRangeError,
            "whole UTC hours",
        ),
        (
            {"start": utc(2024, 1, 1), "end": utc(2024, 3, 1), "granularity": "hour"},
            UsageRangeError,
            f"at most {MAX_POINTS['hour']} hours",
        ),
        (
            {"start": datetime(2024, 1, 1), "end": utc(2024, 1, 2), "granularity": "hour"},
            UsageRangeError,
            "UTC offset",
        ),
        (
            {"start": date(2024, 1, 1), "end": date(2024, 1, 2), "group_by": "plan"},
            UnknownDimension,
            "no dimension 'plan'",
        ),
    ],
)
def test_bad_ranges_and_dimensions_are_explained(kolkata, spend, kwargs, error, message):
    with pytest.raises(error, match=message):
        usage_series(account=kolkata, meter=spend, **kwargs)


def test_cumulative_usage_runs_per_aggregation_and_ends_at_the_exact_total(kolkata, spend):
    users = MeterFactory(code="users", aggregation=A.UNIQUE_COUNT, value_property="user")
    peak = MeterFactory(code="peak", aggregation=A.MAX, value_property="n")
    insert(
        event(kolkata, spend, utc(2024, 1, 2, 6), "2"),
        event(kolkata, spend, utc(2024, 1, 4, 6), "3"),
        event(kolkata, users, utc(2024, 1, 2, 6), unique="a"),
        event(kolkata, users, utc(2024, 1, 3, 6), unique="a"),
        event(kolkata, users, utc(2024, 1, 4, 6), unique="b"),
        event(kolkata, peak, utc(2024, 1, 2, 6), "5"),
        event(kolkata, peak, utc(2024, 1, 3, 6), "4"),
    )
    rollups.rollup_drain()
    days = {"first": date(2024, 1, 1), "end": date(2024, 1, 5)}

    assert [v for _, v in usage_cumulative(account=kolkata, meter=spend, **days)] == [0, 2, 2, 5]
    assert [v for _, v in usage_cumulative(account=kolkata, meter=users, **days)] == [0, 1, 1, 2]
    assert [v for _, v in usage_cumulative(account=kolkata, meter=peak, **days)] == [
        None,
        5,
        5,
        5,
    ]
    end = date(2024, 1, 5)
    total = usage_total(account=kolkata, meter=users, start=days["first"], end=end)
    assert usage_cumulative(account=kolkata, meter=users, **days)[-1] == (date(2024, 1, 4), total)


def test_daily_points_follow_local_days_across_a_dst_change():
    """Each point is its local day in UTC: the day clocks go forward is 23 hours long, and every
    point ends where the next starts."""
    berlin = AccountFactory(timezone="Europe/Berlin")
    meter = MeterFactory(code="calls_dst")

    series = usage_series(
        account=berlin, meter=meter, start=date(2024, 3, 30), end=date(2024, 4, 1)
    )

    assert [(p.start, p.end) for p in series.points] == [
        (utc(2024, 3, 29, 23), utc(2024, 3, 30, 23)),
        (utc(2024, 3, 30, 23), utc(2024, 3, 31, 22)),
    ]
    assert (series.start, series.end) == (utc(2024, 3, 29, 23), utc(2024, 3, 31, 22))
