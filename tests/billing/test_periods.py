"""Billing periods: month ends, time zones (DST, +5:30, +5:45), and their open/closing/closed
life cycle."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.models import BillingPeriod
from billing.periods import (
    local_date,
    local_midnight_utc,
    period_dates_for,
    period_for,
    period_for_date,
    periods_between,
)
from billing.services.periods import (
    PeriodNotEnded,
    PeriodOutsideSubscription,
    PeriodStateError,
    billing_period_begin_close,
    billing_period_close,
    billing_period_ensure,
    billing_period_finish_close,
)
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from tests.billing.factories import AccountFactory, MeterFactory

D = dt.date
UTC = dt.UTC


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def starts(anchor: int, first: dt.date, count: int) -> list[dt.date]:
    """The start dates of `count` consecutive periods from the one containing `first`."""
    out = []
    on = first
    for _ in range(count):
        start, end = period_dates_for(anchor_day=anchor, on=on)
        out.append(start)
        on = end
    return out


# --- month ends ------------------------------------------------------------------------------


def test_anchor_31_uses_the_last_day_of_short_months_then_returns_to_31():
    assert starts(31, D(2023, 1, 31), 7) == [
        D(2023, 1, 31),
        D(2023, 2, 28),
        D(2023, 3, 31),
        D(2023, 4, 30),
        D(2023, 5, 31),
        D(2023, 6, 30),
        D(2023, 7, 31),
    ]


def test_anchor_31_in_a_leap_year_gives_february_29():
    assert starts(31, D(2024, 1, 31), 3) == [D(2024, 1, 31), D(2024, 2, 29), D(2024, 3, 31)]


@pytest.mark.parametrize(
    ("anchor", "year", "february"),
    [
        (29, 2023, D(2023, 2, 28)),
        (29, 2024, D(2024, 2, 29)),
        (30, 2023, D(2023, 2, 28)),
        (30, 2024, D(2024, 2, 29)),
    ],
)
def test_anchors_29_and_30_fall_back_in_february_only(anchor, year, february):
    assert starts(anchor, D(year, 1, anchor), 3) == [
        D(year, 1, anchor),
        february,
        D(year, 3, anchor),
    ]


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        (D(2023, 2, 27), (D(2023, 1, 31), D(2023, 2, 28))),
        (D(2023, 2, 28), (D(2023, 2, 28), D(2023, 3, 31))),
        (D(2023, 3, 1), (D(2023, 2, 28), D(2023, 3, 31))),
        (D(2023, 3, 30), (D(2023, 2, 28), D(2023, 3, 31))),
        (D(2023, 12, 31), (D(2023, 12, 31), D(2024, 1, 31))),
        (D(2024, 1, 1), (D(2023, 12, 31), D(2024, 1, 31))),
    ],
)
def test_the_period_containing_a_day_with_anchor_31(on, expected):
    assert period_dates_for(anchor_day=31, on=on) == expected


def test_anchor_1_periods_are_calendar_months_across_the_year_end():
    assert period_dates_for(anchor_day=1, on=D(2023, 12, 31)) == (D(2023, 12, 1), D(2024, 1, 1))
    assert period_dates_for(anchor_day=1, on=D(2024, 1, 1)) == (D(2024, 1, 1), D(2024, 2, 1))


@pytest.mark.parametrize("anchor", [0, 32, True, "1"])
def test_anchor_days_outside_1_to_31_are_refused(anchor):
    with pytest.raises(ValueError):
        period_dates_for(anchor_day=anchor, on=D(2024, 1, 1))


@settings(deadline=None)
@given(
    anchor=st.integers(min_value=1, max_value=31),
    on=st.dates(min_value=D(1990, 1, 1), max_value=D(2090, 12, 31)),
)
def test_every_day_is_in_exactly_one_period_and_periods_chain(anchor, on):
    start, end = period_dates_for(anchor_day=anchor, on=on)
    assert start <= on < end
    assert 28 <= (end - start).days <= 31
    # The start is the anchor, or the month's last day when the month is shorter.
    assert start.day == anchor or ((start + dt.timedelta(days=1)).day == 1 and start.day < anchor)
    # The next period starts where this one ends, and the previous one ends where it starts.
    assert period_dates_for(anchor_day=anchor, on=end)[0] == end
    assert period_dates_for(anchor_day=anchor, on=start - dt.timedelta(days=1))[1] == start


# --- time zones ------------------------------------------------------------------------------


def test_new_york_march_period_starts_at_midnight_est_and_ends_at_midnight_edt():
    # DST began 2024-03-10 at 02:00 local; the period is an hour shorter than 31 days.
    bounds = period_for(anchor_day=10, tz="America/New_York", at=utc(2024, 3, 10, 12))
    assert bounds.start_date == D(2024, 3, 10)
    assert bounds.end_date == D(2024, 4, 10)
    assert bounds.starts_at == utc(2024, 3, 10, 5)
    assert bounds.ends_at == utc(2024, 4, 10, 4)
    assert bounds.ends_at - bounds.starts_at == dt.timedelta(days=31, hours=-1)


def test_new_york_november_period_starts_at_midnight_edt_and_ends_at_midnight_est():
    # DST ended 2024-11-03 at 02:00 local; the period is an hour longer than 30 days.
    bounds = period_for(anchor_day=3, tz="America/New_York", at=utc(2024, 11, 20))
    assert bounds.starts_at == utc(2024, 11, 3, 4)
    assert bounds.ends_at == utc(2024, 12, 3, 5)
    assert bounds.ends_at - bounds.starts_at == dt.timedelta(days=30, hours=1)


def test_new_york_instant_before_local_midnight_belongs_to_the_previous_period():
    # 2024-03-01 04:59 UTC is still Feb 29 in New York.
    assert period_for(anchor_day=1, tz="America/New_York", at=utc(2024, 3, 1, 4, 59)) == (
        D(2024, 2, 1),
        D(2024, 3, 1),
        utc(2024, 2, 1, 5),
        utc(2024, 3, 1, 5),
    )
    assert period_for(anchor_day=1, tz="America/New_York", at=utc(2024, 3, 1, 5)).start_date == (
        D(2024, 3, 1)
    )


@pytest.mark.parametrize(
    ("tz", "boundary"),
    [("Asia/Kolkata", utc(2024, 1, 31, 18, 30)), ("Asia/Kathmandu", utc(2024, 1, 31, 18, 15))],
)
def test_half_and_quarter_hour_zones_start_periods_at_their_local_midnight(tz, boundary):
    bounds = period_for(anchor_day=1, tz=tz, at=boundary)
    assert bounds.start_date == D(2024, 2, 1)
    assert bounds.starts_at == boundary
    earlier = period_for(anchor_day=1, tz=tz, at=boundary - dt.timedelta(microseconds=1))
    assert earlier.start_date == D(2024, 1, 1)
    assert earlier.ends_at == boundary


def test_a_day_that_begins_at_01_00_still_starts_when_the_day_begins():
    # Chile skipped 2024-09-08 00:00-01:00: the day began at 01:00 -03, i.e. 04:00 UTC.
    start = local_midnight_utc(D(2024, 9, 8), "America/Santiago")
    assert start == utc(2024, 9, 8, 4)
    assert local_date(start, "America/Santiago") == D(2024, 9, 8)
    assert local_date(start - dt.timedelta(microseconds=1), "America/Santiago") == D(2024, 9, 7)


ZONES = [
    "UTC",
    "America/New_York",
    "America/Santiago",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Havana",
    "Europe/London",
    "Pacific/Apia",
]


@settings(deadline=None)
@given(tz=st.sampled_from(ZONES), day=st.dates(min_value=D(2000, 1, 1), max_value=D(2040, 1, 1)))
def test_local_midnight_is_the_first_instant_of_the_local_day(tz, day):
    start = local_midnight_utc(day, tz)
    assert start.tzinfo is UTC
    assert local_date(start, tz) == day
    assert local_date(start - dt.timedelta(microseconds=1), tz) < day


@settings(deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    anchor=st.integers(min_value=1, max_value=31),
    start=st.datetimes(
        min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
    hours=st.integers(min_value=1, max_value=24 * 400),
)
def test_periods_between_cover_the_range_without_gaps_or_overlaps(tz, anchor, start, hours):
    end = start + dt.timedelta(hours=hours)
    periods = periods_between(anchor_day=anchor, tz=tz, start=start, end=end)
    assert periods[0].starts_at <= start < periods[0].ends_at
    assert periods[-1].starts_at < end <= periods[-1].ends_at
    for before, after in itertools.pairwise(periods):
        assert before.ends_at == after.starts_at
        assert before.end_date == after.start_date


def test_periods_between_an_empty_range_is_empty_and_naive_times_are_refused():
    assert periods_between(anchor_day=1, tz="UTC", start=utc(2024, 1, 2), end=utc(2024, 1, 1)) == []
    with pytest.raises(ValueError):
        period_for(anchor_day=1, tz="UTC", at=dt.datetime(2024, 1, 1))


def test_period_for_date_accepts_a_zoneinfo_object():
    bounds = period_for_date(anchor_day=15, tz=ZoneInfo("Asia/Kolkata"), on=D(2024, 6, 1))
    assert bounds.start_date == D(2024, 5, 15)
    assert bounds.starts_at == utc(2024, 5, 14, 18, 30)


# --- the period life cycle (database) --------------------------------------------------------


@pytest.fixture
def kolkata_subscription(db):
    account = AccountFactory(timezone="Asia/Kolkata", currency="USD")
    plan = plan_create(
        code="growth",
        name="Growth",
        currency="USD",
        flat_fee_minor=1000,
        minimum_commitment_minor=0,
    )
    meter = MeterFactory(code="api_calls", unit="API calls")
    price_add(plan=plan, meter=meter, model="per_unit", unit_price=Decimal("0.0004"))
    return subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 31), now=utc(2024, 2, 10)
    )


def test_ensure_is_idempotent_and_cuts_periods_in_the_account_zone(kolkata_subscription):
    sub = kolkata_subscription
    # Created by subscription_create: Jan 31 - Feb 29 (leap year), in Kolkata.
    first = billing_period_ensure(subscription=sub, at=utc(2024, 2, 10))
    again = billing_period_ensure(subscription=sub, at=utc(2024, 2, 28, 18, 29))
    assert first.pk == again.pk
    assert (first.start_date, first.end_date) == (D(2024, 1, 31), D(2024, 2, 29))
    assert first.starts_at == utc(2024, 1, 30, 18, 30)
    assert first.ends_at == utc(2024, 2, 28, 18, 30)
    assert first.timezone == "Asia/Kolkata"
    assert first.currency == "USD"
    assert first.state == BillingPeriod.State.OPEN
    # 18:30 UTC on Feb 28 is midnight Feb 29 in Kolkata: the next period.
    second = billing_period_ensure(subscription=sub, at=utc(2024, 2, 28, 18, 30))
    assert (second.start_date, second.end_date) == (D(2024, 2, 29), D(2024, 3, 31))
    assert BillingPeriod.objects.filter(subscription=sub).count() == 2


def test_ensure_refuses_instants_before_the_subscription(kolkata_subscription):
    with pytest.raises(PeriodOutsideSubscription):
        billing_period_ensure(subscription=kolkata_subscription, at=utc(2024, 1, 30, 18, 29))


def test_closing_goes_open_closing_closed_and_stores_the_total(
    kolkata_subscription, django_user_model
):
    user = django_user_model.objects.create_user("closer")
    period = billing_period_ensure(subscription=kolkata_subscription, at=utc(2024, 2, 10))
    with pytest.raises(PeriodNotEnded):
        billing_period_close(period=period, quantities={}, now=utc(2024, 2, 28, 18, 29))
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN

    closed = billing_period_close(
        period=period,
        quantities={"api_calls": Decimal(12_345_678), "not_on_plan": Decimal(5)},
        actor=user,
        now=utc(2024, 3, 1),
    )
    assert closed.state == BillingPeriod.State.CLOSED
    assert closed.total_minor == 1000 + 493827
    assert closed.total_display == "$4,948.27"
    assert closed.closed_at is not None
    assert [line["kind"] for line in closed.invoice_lines] == ["plan_fee", "usage"]
    assert closed.invoice_lines[1]["quantity"] == "12345678"
    assert closed.invoice_lines[1]["exact_amount"] == "4938.2712"
    states = list(closed.history.order_by("history_date").values_list("state", "history_user"))
    assert states == [("open", None), ("closing", user.pk), ("closed", user.pk)]

    # Closing again changes nothing, even with other numbers.
    again = billing_period_close(
        period=period, quantities={"api_calls": Decimal(1)}, now=utc(2024, 3, 2)
    )
    assert again.total_minor == 1000 + 493827
    assert again.history.count() == 3


def test_a_close_interrupted_after_closing_is_finished_by_the_next_run(kolkata_subscription):
    period = billing_period_ensure(subscription=kolkata_subscription, at=utc(2024, 2, 10))
    billing_period_begin_close(period=period, now=utc(2024, 3, 1))
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.CLOSING
    assert period.total_minor is None
    closed = billing_period_close(period=period, quantities={}, now=utc(2024, 3, 1))
    assert closed.state == BillingPeriod.State.CLOSED
    assert closed.total_minor == 1000


def test_finishing_a_close_needs_a_closing_period(kolkata_subscription):
    period = billing_period_ensure(subscription=kolkata_subscription, at=utc(2024, 2, 10))
    with pytest.raises(PeriodStateError):
        billing_period_finish_close(period=period, quantities={})


@pytest.mark.django_db(transaction=True)
def test_concurrent_ensures_create_one_period():
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    account = AccountFactory(timezone="America/New_York")
    plan = plan_create(code="race", name="Race", currency="USD")
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 1, 2)
    )

    def ensure(_):
        try:
            return billing_period_ensure(subscription=sub, at=utc(2024, 2, 15)).pk
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = set(pool.map(ensure, range(8)))
    assert len(ids) == 1
    assert BillingPeriod.objects.filter(subscription=sub, start_date=D(2024, 2, 1)).count() == 1


def test_closing_without_quantities_prices_the_rollups_of_the_periods_local_days(db, admin_client):
    from metering.services.ingest import events_ingest
    from metering.services.rollups import rollup_drain

    account = AccountFactory(timezone="Asia/Kolkata")
    meter = MeterFactory(code="searches", unit="searches")
    plan = plan_create(code="search", name="Search", currency="USD", flat_fee_minor=1000)
    price_add(plan=plan, meter=meter, model="per_unit", unit_price="0.25")
    sub = subscription_create(
        account=account,
        plan=plan,
        started_at=D(2024, 1, 1),
        billing_anchor_day=31,
        now=utc(2024, 1, 2),
    )
    instants = [
        utc(2024, 1, 30, 18, 29),  # Jan 30, 23:59 in Kolkata: the period before
        utc(2024, 1, 30, 18, 30),  # Jan 31, 00:00: the first instant of the period
        utc(2024, 2, 14, 12),
        utc(2024, 2, 28, 18, 29),  # Feb 28, 23:59: the last minute of the period
        utc(2024, 2, 28, 18, 30),  # Feb 29, 00:00: the next period
    ]
    result = events_ingest(
        items=[
            {
                "transaction_id": f"s-{n}",
                "external_customer_id": account.external_id,
                "code": "searches",
                "timestamp": at.isoformat(),
                "properties": {},
            }
            for n, at in enumerate(instants)
        ],
        fmt="lago",
        now=utc(2024, 3, 1),
    )
    assert result.accepted == 5
    rollup_drain()
    period = billing_period_ensure(subscription=sub, at=utc(2024, 2, 14))
    assert (period.start_date, period.end_date) == (D(2024, 1, 31), D(2024, 2, 29))

    closed = billing_period_close(period=period, now=utc(2024, 3, 1))
    assert closed.invoice_lines[1]["quantity"] == "3"
    assert closed.total_minor == 1000 + 75

    # An event for the period that arrives after the invoice: shown as late, never re-billed.
    from billing.selectors import period_late_usage

    assert period_late_usage(period=closed) == []
    late = events_ingest(
        items=[
            {
                "transaction_id": "s-late",
                "external_customer_id": account.external_id,
                "code": "searches",
                "timestamp": utc(2024, 2, 20).isoformat(),
                "properties": {},
            }
        ],
        fmt="lago",
        now=utc(2024, 3, 2),
    )
    assert late.accepted == 1
    rollup_drain()
    closed.refresh_from_db()
    (row,) = period_late_usage(period=closed)
    assert (row.meter_code, row.invoiced, row.now, row.difference) == ("searches", 3, 4, 1)
    assert closed.total_minor == 1000 + 75
    assert billing_period_close(period=closed, now=utc(2024, 3, 3)).total_minor == 1075
    page = admin_client.get(f"/admin/billing/billingperiod/{closed.pk}/change/")
    assert page.status_code == 200
    assert b"invoiced 3, now 4 (+1)" in page.content


def test_a_period_names_its_last_day_not_the_next_periods_first():
    from datetime import date

    from billing.models import BillingPeriod

    period = BillingPeriod(start_date=date(2026, 11, 1), end_date=date(2026, 12, 1), state="open")
    assert str(period) == "2026-11-01 – 2026-11-30 (open)"
