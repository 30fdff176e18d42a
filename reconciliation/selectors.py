"""Reads for reconciliation: the three numbers of an account's cells, per period and per UTC
day, in a fixed number of queries per account and period whatever the number of meters.

Some of these read billing's and metering's tables directly (the hourly rollups, the push
ledger, the provider's summaries and invoices) because no selector there answers per UTC day
for several meters at once; they belong in those apps eventually (see the module's notes in
the README's "Reconciliation" section).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from billing.models import (
    BillingPeriod,
    Price,
    ProviderInvoiceLine,
    ProviderMeter,
    ProviderUsageSummary,
    PushLedgerEntry,
)
from billing.pricing import PriceSpec
from metering.models import Account, Meter
from metering.rollup_selectors import usage_daily_by_meter

A = Meter.Aggregation
Status = PushLedgerEntry.Status
SUM_METERS = (A.COUNT, A.SUM)
# Periods closed this recently are still reconciled (late usage, the provider's invoice).
CLOSED_LOOKBACK = timedelta(days=7)
DAY = timedelta(days=1)


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def cover_days(starts_at: datetime, ends_at: datetime) -> tuple[date, date]:
    """UTC days [first, end) that intersect [starts_at, ends_at)."""
    first = starts_at.astimezone(UTC).date()
    last_instant = (ends_at - timedelta(microseconds=1)).astimezone(UTC)
    return first, last_instant.date() + DAY


def window_days(starts_at: datetime, ends_at: datetime) -> tuple[date, date]:
    """The cover days and one UTC day either side: usage the provider shifted by a clock skew
    of less than a day across the period's boundary is still in the window."""
    first, end = cover_days(starts_at, ends_at)
    return first - DAY, end + DAY


def is_utc_aligned(at: datetime) -> bool:
    at = at.astimezone(UTC)
    return (at.hour, at.minute, at.second, at.microsecond) == (0, 0, 0, 0)


# --- what to reconcile -------------------------------------------------------------------------


def periods_to_reconcile_q(*, now: datetime, period_end_before: date | None = None) -> Q:
    """Periods that started, and are open, closing, or closed in the last 7 days."""
    q = Q(starts_at__lte=now) & (
        Q(state__in=[BillingPeriod.State.OPEN, BillingPeriod.State.CLOSING])
        | Q(state=BillingPeriod.State.CLOSED, closed_at__gte=now - CLOSED_LOOKBACK)
    )
    if period_end_before is not None:
        q &= Q(end_date__lte=period_end_before)
    return q


def accounts_to_reconcile(
    *, now: datetime | None = None, period_end_before: date | None = None
) -> list[int]:
    now = now or timezone.now()
    return list(
        BillingPeriod.objects.filter(
            periods_to_reconcile_q(now=now, period_end_before=period_end_before)
        )
        .values_list("account_id", flat=True)
        .distinct()
        .order_by("account_id")
    )


def periods_to_reconcile(
    *, account: Account, now: datetime, period_end_before: date | None = None
) -> list[BillingPeriod]:
    return list(
        BillingPeriod.objects.filter(account=account)
        .filter(periods_to_reconcile_q(now=now, period_end_before=period_end_before))
        .select_related("subscription__plan")
        .order_by("starts_at")
    )


def period_prices(period: BillingPeriod) -> dict[int, PriceSpec]:
    """meter id -> the period's price for it (from the subscription's plan)."""
    prices = Price.objects.filter(plan_id=period.subscription.plan_id).select_related(
        "meter", "plan"
    )
    return {price.meter_id: price.to_spec() for price in prices}


# --- ours --------------------------------------------------------------------------------------


@dataclass
class OursDay:
    value: Decimal | None
    events: int


def ours_by_utc_day(*, account_id: int, first: date, end: date) -> dict[int, dict[date, OursDay]]:
    """meter id -> UTC day -> our value that day (in the meter's aggregation) and the raw event
    count, from the hourly (UTC) rollups. Two queries."""
    lo, hi = utc_midnight(first), utc_midnight(end)
    rows = _fetch(
        """
        SELECT r.meter_id, (r.hour AT TIME ZONE 'UTC')::date AS day, m.aggregation,
               sum(r.count), sum(r.sum), max(r.max),
               (max(ARRAY[(extract(epoch FROM r.latest_at) * 1000000)::numeric,
                          r.latest_event_id::numeric, r.latest_value])
                   FILTER (WHERE r.latest_at IS NOT NULL))[3]
        FROM metering_rolluphourly r JOIN metering_meter m ON m.id = r.meter_id
        WHERE r.account_id = %(a)s AND r.dim_key = '' AND r.hour >= %(lo)s AND r.hour < %(hi)s
        GROUP BY 1, 2, 3
        """,
        {"a": account_id, "lo": lo, "hi": hi},
    )
    distinct = {
        (meter_id, day): count
        for meter_id, day, count in _fetch(
            """
            SELECT meter_id, (hour AT TIME ZONE 'UTC')::date, count(DISTINCT value)
            FROM metering_rolluphourlydistinct
            WHERE account_id = %(a)s AND dim_key = '' AND hour >= %(lo)s AND hour < %(hi)s
            GROUP BY 1, 2
            """,
            {"a": account_id, "lo": lo, "hi": hi},
        )
    }
    result: dict[int, dict[date, OursDay]] = defaultdict(dict)
    for meter_id, day, aggregation, count, total, top, latest in rows:
        value = {
            A.COUNT: Decimal(count or 0),
            A.SUM: Decimal(total or 0),
            A.MAX: None if top is None else Decimal(top),
            A.LATEST: None if latest is None else Decimal(latest),
            A.UNIQUE_COUNT: Decimal(distinct.get((meter_id, day), 0)),
        }[aggregation]
        result[meter_id][day] = OursDay(value, int(count or 0))
    return result


def ours_by_period(*, period: BillingPeriod, meters: list[Meter]) -> dict[int, Decimal]:
    """meter id -> our value over the period's exact bounds: its local days, from the daily
    rollups cut in the account's zone (three queries; distinct values for unique_count)."""
    if not meters:
        return {}
    usage = usage_daily_by_meter(
        account=period.account, first=period.start_date, end=period.end_date, meters=meters
    )
    return {row.meter.pk: row.total or Decimal(0) for row in usage}


# --- reported (the push ledger) ---------------------------------------------------------------


@dataclass
class LedgerCell:
    """The push ledger's view of one cell."""

    done: Decimal = Decimal(0)  # sent or acknowledged, usage inside the period
    pending: Decimal = Decimal(0)  # pending, inside the period
    failed: Decimal = Decimal(0)  # failed or rejected, inside the period
    too_old: Decimal = Decimal(0)  # too_old, inside the period
    done_by_day: dict[date, Decimal] = field(default_factory=dict)
    pending_by_day: dict[date, Decimal] = field(default_factory=dict)
    # Value sent (done) to each provider customer id, inside the period.
    done_by_customer: dict[str, Decimal] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # entries by status, in the period
    latest_status: str = ""  # period-to-date meters: the newest entry's status
    latest_value: Decimal | None = None


NOT_TAKEN = (Status.PENDING,)
FAILED = (Status.FAILED, Status.REJECTED)


def ledger_for_period(
    *, account_id: int, provider: str, period: BillingPeriod, first: date, end: date
) -> dict[int, LedgerCell]:
    """meter id -> the ledger's view of the cell. Event entries (count and sum meters) are
    summed by UTC day over [first, end) and by status inside the period's exact bounds;
    period-to-date entries (max, latest, unique_count) are read for the period's start.
    Two queries."""
    rows = _fetch(
        """
        SELECT meter_id, day, status,
               timestamp >= %(s)s AND timestamp < %(e)s AS inside,
               coalesce(payload->'payload'->>'stripe_customer_id', '') AS customer,
               sum(value), count(*)
        FROM billing_pushledgerentry
        WHERE provider = %(p)s AND account_id = %(a)s AND kind = 'event'
          AND day >= %(lo)s AND day < %(hi)s
        GROUP BY 1, 2, 3, 4, 5
        """,
        {
            "p": provider,
            "a": account_id,
            "s": period.starts_at,
            "e": period.ends_at,
            "lo": first,
            "hi": end,
        },
    )
    cells: dict[int, LedgerCell] = defaultdict(LedgerCell)
    for meter_id, day, status, inside, customer, total, count in rows:
        cell = cells[meter_id]
        total = Decimal(total)
        if status in PushLedgerEntry.DONE:
            cell.done_by_day[day] = cell.done_by_day.get(day, Decimal(0)) + total
        elif status in NOT_TAKEN + FAILED:
            cell.pending_by_day[day] = cell.pending_by_day.get(day, Decimal(0)) + total
        if not inside:
            continue
        cell.counts[status] = cell.counts.get(status, 0) + count
        if status in PushLedgerEntry.DONE:
            cell.done += total
            cell.done_by_customer[customer] = cell.done_by_customer.get(customer, 0) + total
        elif status in NOT_TAKEN:
            cell.pending += total
        elif status in FAILED:
            cell.failed += total
        elif status == Status.TOO_OLD:
            cell.too_old += total
    gauges = (
        PushLedgerEntry.objects.filter(
            provider=provider,
            account_id=account_id,
            kind=PushLedgerEntry.Kind.PERIOD_TO_DATE,
            period_start=period.start_date,
        )
        .order_by("meter_id", "seq")
        .values_list("meter_id", "seq", "status", "value", "day", "payload")
    )
    for meter_id, _seq, status, value, day, payload in gauges:
        cell = cells[meter_id]
        cell.counts[status] = cell.counts.get(status, 0) + 1
        cell.latest_status, cell.latest_value = status, value
        if status in PushLedgerEntry.DONE:
            cell.done = value  # the newest value the provider took is the period's value
            cell.done_by_day[day] = value
            customer = (payload or {}).get("payload", {}).get("stripe_customer_id", "")
            cell.done_by_customer = {customer: value}
        elif status == Status.SUPERSEDED:
            continue
        elif status in NOT_TAKEN + FAILED:
            cell.pending_by_day[day] = value
    for cell in cells.values():
        if cell.latest_value is None:
            continue  # no period-to-date entries: an event meter
        unsent = cell.latest_value - cell.done
        if cell.latest_status in NOT_TAKEN:
            cell.pending = unsent
        elif cell.latest_status in FAILED:
            cell.failed = unsent
        elif cell.latest_status == Status.TOO_OLD:
            cell.too_old = unsent
    return dict(cells)


def ledger_entries_for_cell(*, mismatch, limit: int = 200):
    """The push ledger entries of a mismatch's cell, newest first (for the mismatch page)."""
    first, end = window_days(mismatch.period_starts_at, mismatch.period_ends_at)
    return (
        PushLedgerEntry.objects.filter(
            provider=mismatch.provider, account_id=mismatch.account_id, meter_id=mismatch.meter_id
        )
        .filter(
            Q(kind=PushLedgerEntry.Kind.EVENT, day__gte=first, day__lt=end)
            | Q(kind=PushLedgerEntry.Kind.PERIOD_TO_DATE, period_start=mismatch.period_start)
        )
        .order_by("-timestamp", "-id")[:limit]
    )


# --- provider ----------------------------------------------------------------------------------


def provider_days(
    *, account_id: int, provider: str, first: date, end: date
) -> dict[int, dict[date, Decimal]]:
    """meter id -> UTC day -> the provider's stored daily summary (as last pulled)."""
    result: dict[int, dict[date, Decimal]] = defaultdict(dict)
    rows = ProviderUsageSummary.objects.filter(
        provider=provider, account_id=account_id, day__gte=first, day__lt=end
    ).values_list("meter_id", "day", "value")
    for meter_id, day, value in rows:
        result[meter_id][day] = value
    return result


def provider_meters(*, provider: str) -> dict[int, ProviderMeter]:
    return {pm.meter_id: pm for pm in ProviderMeter.objects.filter(provider=provider)}


def invoiced_quantities(
    *, account_id: int, provider: str, period: BillingPeriod
) -> dict[int, Decimal]:
    """meter id -> the quantity on the provider's invoice for this period (closed periods)."""
    lines = (
        ProviderInvoiceLine.objects.filter(
            invoice__provider=provider,
            invoice__account_id=account_id,
            meter__isnull=False,
            quantity__isnull=False,
        )
        .filter(
            Q(period_start=period.starts_at)
            | Q(period_start__isnull=True, invoice__period_start=period.starts_at)
        )
        .values_list("meter_id", "quantity")
    )
    result: dict[int, Decimal] = {}
    for meter_id, quantity in lines:
        result[meter_id] = result.get(meter_id, Decimal(0)) + quantity
    return result


def late_usage_after_close(*, period: BillingPeriod) -> dict[int, tuple[int, Decimal]]:
    """meter id -> (events, value) of usage inside the period that arrived after it closed
    (count meters: the events; sum meters: their values; others: the events)."""
    if period.closed_at is None:
        return {}
    rows = _fetch(
        """
        SELECT e.meter_id, count(*), sum(CASE WHEN m.aggregation = 'sum' THEN e.value
                                              ELSE 1 END)
        FROM metering_usageevent e JOIN metering_meter m ON m.id = e.meter_id
        WHERE e.account_id = %(a)s AND e.occurred_at >= %(s)s AND e.occurred_at < %(e)s
          AND e.received_at > %(c)s
        GROUP BY 1
        """,
        {"a": period.account_id, "s": period.starts_at, "e": period.ends_at, "c": period.closed_at},
    )
    return {meter_id: (count, Decimal(value or 0)) for meter_id, count, value in rows}


# --- the mismatch page -------------------------------------------------------------------------


@dataclass
class PageDay:
    day: date
    ours: Decimal | None
    reported: Decimal | None
    pending: Decimal
    provider: Decimal | None
    events: int
    events_url: str
    in_period: bool  # the UTC day intersects the period
    delta: Decimal | None = None  # ours − provider
    delta_reported: Decimal | None = None  # ours − reported
    delta_provider: Decimal | None = None  # reported − provider


def _minus(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None and b is None:
        return None
    return (a or Decimal(0)) - (b or Decimal(0))


def mismatch_page_days(*, mismatch, events_url) -> list[PageDay]:
    """The mismatch's UTC days with their deltas and a link to each day's raw events
    (`events_url(start, end)` builds it)."""
    first, end = cover_days(mismatch.period_starts_at, mismatch.period_ends_at)
    rows = []
    for d in mismatch.days.order_by("day"):
        start = utc_midnight(d.day)
        rows.append(
            PageDay(
                day=d.day,
                ours=d.ours,
                reported=d.reported,
                pending=d.pending,
                provider=d.provider,
                events=d.events,
                events_url=events_url(start, start + DAY),
                in_period=first <= d.day < end,
                delta=_minus(d.ours, d.provider),
                delta_reported=_minus(d.ours, d.reported),
                delta_provider=_minus(d.reported, d.provider),
            )
        )
    return rows
