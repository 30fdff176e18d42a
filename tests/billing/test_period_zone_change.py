"""An account's time zone changes while a period is open: the rule is that the change applies
from the next period. The open period keeps its UTC bounds; the next one starts exactly at its
end instant and ends at a local midnight of the new zone; closed periods never change. Every
instant belongs to exactly one period, and each event is invoiced exactly once."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from billing.models import BillingPeriod
from billing.selectors import period_usage
from billing.services.periods import billing_periods_roll
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.models import Meter
from metering.rollup_selectors import usage_totals_between
from metering.services import rollups
from metering.services.accounts import account_upsert
from tests.billing.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

pytestmark = pytest.mark.django_db

D = dt.date
US = dt.timedelta(microseconds=1)


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def _subscribed(zone: str):
    account = AccountFactory(external_id="zone-change", timezone=zone, currency="USD")
    plan = plan_create(code="zc", name="ZC", currency="USD", flat_fee_minor=0)
    calls = MeterFactory(code="calls", unit="calls")
    users = MeterFactory(
        code="users", aggregation=Meter.Aggregation.UNIQUE_COUNT, value_property="user"
    )
    price_add(plan=plan, meter=calls, model="per_unit", unit_price=Decimal("1"))
    price_add(plan=plan, meter=users, model="per_unit", unit_price=Decimal("0"))
    subscription_create(account=account, plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 1, 10))
    return account, calls, users


def _change_zone(account, zone, django_capture_on_commit_callbacks) -> None:
    # Through the service, as the API does; the queued rollup rebuild runs (tasks run in place).
    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id=account.external_id, timezone=zone, currency="USD")
    account.refresh_from_db()


def _bounds(account) -> list[tuple]:
    return list(
        BillingPeriod.objects.filter(account=account)
        .order_by("starts_at")
        .values_list("start_date", "end_date", "timezone", "starts_at", "ends_at")
    )


def _assert_contiguous(account) -> None:
    rows = _bounds(account)
    for (*_, ends_at), (*_, starts_at, _next_end) in itertools.pairwise(rows):
        assert ends_at == starts_at, rows  # no gap, no overlap


@pytest.mark.parametrize(
    ("old", "new", "january_end", "february_end"),
    [
        # Ahead: Kolkata's Feb 1 begins 5:30 before January (cut in UTC) ends.
        ("UTC", "Asia/Kolkata", utc(2024, 2, 1), utc(2024, 2, 29, 18, 30)),
        # Behind: UTC's Feb 1 begins 5:30 after January (cut in Kolkata) ends.
        ("Asia/Kolkata", "UTC", utc(2024, 1, 31, 18, 30), utc(2024, 3, 1)),
        # Quarter-hour zone to a DST zone.
        ("Asia/Kathmandu", "America/New_York", utc(2024, 1, 31, 18, 15), utc(2024, 3, 1, 5)),
    ],
)
def test_a_zone_change_applies_from_the_next_period_with_no_gap_and_no_overlap(
    old, new, january_end, february_end, django_capture_on_commit_callbacks
):
    account, _calls, _users = _subscribed(old)
    january = BillingPeriod.objects.get(account=account)
    january_start = january.starts_at

    _change_zone(account, new, django_capture_on_commit_callbacks)
    billing_periods_roll(now=utc(2024, 3, 2, 12))

    rows = _bounds(account)
    # January keeps the bounds it was cut with; February starts where January ends and ends at
    # a midnight of the new zone; March is a whole month of the new zone.
    assert rows[0] == (D(2024, 1, 1), D(2024, 2, 1), old, january_start, january_end)
    assert rows[1] == (D(2024, 2, 1), D(2024, 3, 1), new, january_end, february_end)
    assert rows[2][:4] == (D(2024, 3, 1), D(2024, 4, 1), new, february_end)
    _assert_contiguous(account)

    # Events at and around both boundaries belong to exactly one period each.
    instants = [
        january_end - US,
        january_end,
        february_end - US,
        february_end,
        min(january_end, utc(2024, 1, 31, 18, 30)),
        max(january_end, utc(2024, 2, 1)),
    ]
    for at in instants:
        assert BillingPeriod.objects.filter(account=account).containing(at).count() == 1, at


def test_each_event_near_the_boundary_is_invoiced_exactly_once(django_capture_on_commit_callbacks):
    account, calls, users = _subscribed("UTC")
    _change_zone(account, "Asia/Kolkata", django_capture_on_commit_callbacks)
    boundary = utc(2024, 2, 1)  # January's end, cut in UTC
    kolkata_midnight = utc(2024, 1, 31, 18, 30)  # Feb 1 begins in Kolkata
    at = [
        utc(2024, 1, 1),  # January's first instant (05:30 in Kolkata: a partial local day)
        utc(2024, 1, 15, 12),
        kolkata_midnight - US,
        kolkata_midnight,  # January by its bounds, though Feb 1 in Kolkata
        boundary - US,
        boundary,  # February
        utc(2024, 2, 29, 18, 30) - US,  # February's last instant
        utc(2024, 2, 29, 18, 30),  # March
    ]
    insert(*(event(account, calls, t) for t in at))
    insert(*(event(account, users, t, unique=f"u{i % 3}") for i, t in enumerate(at)))
    rollups.rollup_drain()

    billing_periods_roll(now=utc(2024, 3, 2))  # closes January, opens February and March
    billing_periods_roll(now=utc(2024, 3, 2, 1))  # closes February
    january, february, march = BillingPeriod.objects.filter(account=account).order_by("starts_at")

    assert (january.state, february.state) == ("closed", "closed")
    quantities = [
        {line["meter"]: line["quantity"] for line in p.invoice_lines if line["meter"]}
        for p in (january, february)
    ]
    assert quantities == [{"calls": "5", "users": "3"}, {"calls": "2", "users": "2"}]
    assert period_usage(period=march) == {"calls": Decimal(1), "users": Decimal(1)}
    # The three periods add up to every event, as one span would.
    whole = usage_totals_between(
        account=account, meters=[calls], start=january.starts_at, end=march.ends_at
    )
    assert whole[calls.pk] == Decimal(len(at))


def test_usage_between_instants_counts_partial_days_from_events_as_the_rollups_do(db):
    account = AccountFactory(timezone="Asia/Kolkata")
    calls = MeterFactory(code="calls")
    peak = MeterFactory(code="peak", aggregation=Meter.Aggregation.MAX, value_property="v")
    last = MeterFactory(code="last", aggregation=Meter.Aggregation.LATEST, value_property="v")
    times = [utc(2024, 1, 1, 3), utc(2024, 1, 2, 12), utc(2024, 1, 3, 20), utc(2024, 1, 3, 23)]
    insert(*(event(account, calls, t) for t in times))
    insert(*(event(account, peak, t, v) for t, v in zip(times, (9, 2, 3, 1), strict=True)))
    insert(*(event(account, last, t, v) for t, v in zip(times, (9, 2, 3, 1), strict=True)))
    rollups.rollup_drain()
    meters = [calls, peak, last]

    # 00:00 UTC to 00:00 UTC: partial Kolkata days at both ends, whole days between.
    totals = usage_totals_between(
        account=account, meters=meters, start=utc(2024, 1, 1), end=utc(2024, 1, 4)
    )
    assert totals == {calls.pk: 4, peak.pk: 9, last.pk: 1}
    # Within one local day only (no whole day): all from the events.
    inside = usage_totals_between(
        account=account, meters=meters, start=utc(2024, 1, 3, 19), end=utc(2024, 1, 3, 21)
    )
    assert inside == {calls.pk: 1, peak.pk: 3, last.pk: 3}
    # Events still in the inbox do not count yet, as in the rollups.
    insert(event(account, calls, utc(2024, 1, 1, 4)))
    again = usage_totals_between(
        account=account, meters=[calls], start=utc(2024, 1, 1), end=utc(2024, 1, 4)
    )
    assert again == {calls.pk: 4}


def test_projection_and_dashboard_count_the_open_period_by_its_own_instants(
    django_capture_on_commit_callbacks,
):
    from billing.projection import projected_invoice_build
    from metering.dashboard_selectors import account_usage_dashboard

    account, calls, _users = _subscribed("UTC")
    insert(
        event(account, calls, utc(2023, 12, 31, 20)),  # before the subscription (Jan 1 in Kolkata)
        event(account, calls, utc(2024, 1, 1)),  # January's first instant
        event(account, calls, utc(2024, 1, 15)),
        event(account, calls, utc(2024, 1, 31, 20)),  # Feb 1 in Kolkata, January by its bounds
        event(account, calls, utc(2024, 1, 31, 21)),
    )
    rollups.rollup_drain()
    _change_zone(account, "Asia/Kolkata", django_capture_on_commit_callbacks)
    now = utc(2024, 1, 31, 23)  # still January's open period, already Feb 1 in Kolkata
    january = BillingPeriod.objects.get(account=account)

    invoice = projected_invoice_build(account=account, now=now)
    board = account_usage_dashboard(account=account, at=now)

    (line,) = [line for line in invoice.usage_lines if line.meter_code == "calls"]
    assert invoice.period_id == january.pk
    assert line.units_to_date == 4 == period_usage(period=january)["calls"]
    # Kolkata days Jan 1 .. Feb 1 (both partial) are the period's days on both pages.
    assert (invoice.period_start, invoice.period_end) == (D(2024, 1, 1), D(2024, 2, 2))
    (panel,) = [p for p in board.panels if p.meter.code == "calls"]
    assert (panel.current_total, panel.to_date) == (4, 4)
    assert (board.periods.current.first, board.periods.current.end) == (
        D(2024, 1, 1),
        D(2024, 2, 2),
    )
