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

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
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
from billing.providers import platform_rules
from metering.models import Meter

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


# --- which platforms ---------------------------------------------------------------------------


def reconciliation_platforms() -> list[str]:
    """The platforms reconciled, each on its own: the primary (BILLING_PROVIDER), then the
    read-only secondary (BILLING_PROVIDER_SECONDARY) when one is set for a migration."""
    names = [settings.BILLING_PROVIDER]
    secondary = getattr(settings, "BILLING_PROVIDER_SECONDARY", "")
    if secondary and secondary not in names:
        names.append(secondary)
    return names


def is_read_only_platform(name: str) -> bool:
    """Whether `name` is the read-only secondary: Meterops never pushes to it, so it has no
    push ledger of its own."""
    return bool(name) and name == getattr(settings, "BILLING_PROVIDER_SECONDARY", "")


def platform_label(name: str) -> str:
    return name.capitalize() if name else "–"


def reads_per_day(name: str) -> bool:
    """Whether the platform reads usage back per UTC day (or finer); Lago only per billing
    period (PlatformRules.read_window "period")."""
    return platform_rules(name).read_window != "period"


def mismatch_counts_by_platform(queryset) -> list[tuple[str, int]]:
    """(platform, mismatches in `queryset`) for every platform reconciled now (0 included),
    then any other platform that still has some, in that order (one query)."""
    counts = dict(
        queryset.order_by()
        .values_list("provider")
        .annotate(n=Count("id"))
        .values_list("provider", "n")
    )
    names = reconciliation_platforms()
    names += sorted(set(counts) - set(names))
    return [(name, counts.get(name, 0)) for name in names]


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
    *,
    account_ids: list[int],
    now: datetime,
    period_end_before: date | None = None,
    period_ids: list[int] | None = None,
) -> list[BillingPeriod]:
    """The accounts' periods to reconcile (or exactly `period_ids`, whatever their state),
    with their subscription and account (one query)."""
    periods = BillingPeriod.objects.filter(account_id__in=account_ids)
    if period_ids is not None:
        periods = periods.filter(pk__in=period_ids)
    else:
        periods = periods.filter(
            periods_to_reconcile_q(now=now, period_end_before=period_end_before)
        )
    return list(
        periods.select_related("subscription", "account").order_by("account_id", "starts_at")
    )


def plan_prices(plan_ids: set[int]) -> dict[int, dict[int, PriceSpec]]:
    """plan id -> meter id -> the plan's price for it (one query)."""
    result: dict[int, dict[int, PriceSpec]] = defaultdict(dict)
    for price in Price.objects.filter(plan_id__in=plan_ids).select_related("meter", "plan"):
        result[price.plan_id][price.meter_id] = price.to_spec()
    return result


# --- batched reads: many periods (of many accounts) per query -------------------------------


def _periods_table(periods: list[BillingPeriod]) -> tuple[str, dict]:
    """A FROM item `p(pid, aid, lo, hi, s, e, d0, d1)` of the periods: window UTC days
    [lo, hi), exact bounds [s, e), local days [d0, d1)."""
    windows = [window_days(p.starts_at, p.ends_at) for p in periods]
    params = {
        "pid": [p.pk for p in periods],
        "aid": [p.account_id for p in periods],
        "lo": [w[0] for w in windows],
        "hi": [w[1] for w in windows],
        "s": [p.starts_at for p in periods],
        "e": [p.ends_at for p in periods],
        "d0": [p.start_date for p in periods],
        "d1": [p.end_date for p in periods],
    }
    sql = (
        "unnest(%(pid)s::bigint[], %(aid)s::bigint[], %(lo)s::date[], %(hi)s::date[], "
        "%(s)s::timestamptz[], %(e)s::timestamptz[], %(d0)s::date[], %(d1)s::date[]) "
        "AS p(pid, aid, lo, hi, s, e, d0, d1)"
    )
    return sql, params


_LATEST = """(max(ARRAY[(extract(epoch FROM r.latest_at) * 1000000)::numeric,
                      r.latest_event_id::numeric, r.latest_value])
               FILTER (WHERE r.latest_at IS NOT NULL))[3]"""


def _value(aggregation: str, count, total, top, latest, distinct) -> Decimal | None:
    if aggregation == A.COUNT:
        return Decimal(count or 0)
    if aggregation == A.SUM:
        return Decimal(total or 0)
    if aggregation == A.MAX:
        return None if top is None else Decimal(top)
    if aggregation == A.LATEST:
        return None if latest is None else Decimal(latest)
    return Decimal(distinct or 0)


@dataclass
class OursDay:
    value: Decimal | None
    events: int


def has_unique_meters() -> bool:
    return Meter.objects.filter(aggregation=A.UNIQUE_COUNT).exists()


def ours_by_utc_day(
    cells: list[tuple[BillingPeriod, int]], *, unique: bool = True
) -> dict[int, dict[int, dict[date, OursDay]]]:
    """For (period, meter id) cells: period id -> meter id -> UTC day of the period's window ->
    our value that day (in the meter's aggregation) and the raw event count, from the hourly
    (UTC) rollups. One query, two with unique_count meters."""
    result: dict[int, dict[int, dict[date, OursDay]]] = defaultdict(lambda: defaultdict(dict))
    if not cells:
        return result
    table, params = _periods_table([period for period, _ in cells])
    params["mid"] = [meter_id for _, meter_id in cells]
    table = table.replace("%(d1)s::date[])", "%(d1)s::date[], %(mid)s::bigint[])").replace(
        "d0, d1)", "d0, d1, mid)"
    )
    rows = _fetch(
        f"""
        SELECT p.pid, r.meter_id, (r.hour AT TIME ZONE 'UTC')::date AS day, m.aggregation,
               sum(r.count), sum(r.sum), max(r.max), {_LATEST}
        FROM {table}
        JOIN metering_rolluphourly r
          ON r.account_id = p.aid AND r.meter_id = p.mid AND r.dim_key = ''
         AND r.hour >= (p.lo::timestamp AT TIME ZONE 'UTC')
         AND r.hour < (p.hi::timestamp AT TIME ZONE 'UTC')
        JOIN metering_meter m ON m.id = r.meter_id
        GROUP BY 1, 2, 3, 4
        """,
        params,
    )
    distinct = {}
    if unique:
        distinct = {
            (pid, meter_id, day): count
            for pid, meter_id, day, count in _fetch(
                f"""
                SELECT p.pid, r.meter_id, (r.hour AT TIME ZONE 'UTC')::date,
                       count(DISTINCT r.value)
                FROM {table}
                JOIN metering_rolluphourlydistinct r
                  ON r.account_id = p.aid AND r.meter_id = p.mid AND r.dim_key = ''
                 AND r.hour >= (p.lo::timestamp AT TIME ZONE 'UTC')
                 AND r.hour < (p.hi::timestamp AT TIME ZONE 'UTC')
                GROUP BY 1, 2, 3
                """,
                params,
            )
        }
    for pid, meter_id, day, aggregation, count, total, top, latest in rows:
        value = _value(aggregation, count, total, top, latest, distinct.get((pid, meter_id, day)))
        result[pid][meter_id][day] = OursDay(value, int(count or 0))
    return result


def ours_by_period(
    periods: list[BillingPeriod], *, unique: bool = True
) -> dict[int, dict[int, Decimal]]:
    """period id -> meter id -> our value over the period's exact bounds: its local days, from
    the daily rollups cut in the account's zone, combined as metering.rollup_selectors does
    (distinct values over the whole period for unique_count). One or two queries."""
    table, params = _periods_table(periods)
    rows = _fetch(
        f"""
        SELECT p.pid, r.meter_id, m.aggregation, sum(r.count), sum(r.sum), max(r.max), {_LATEST}
        FROM {table}
        JOIN metering_rollupdaily r
          ON r.account_id = p.aid AND r.dim_key = '' AND r.day >= p.d0 AND r.day < p.d1
        JOIN metering_meter m ON m.id = r.meter_id
        GROUP BY 1, 2, 3
        """,
        params,
    )
    distinct = {}
    if unique:
        distinct = {
            (pid, meter_id): count
            for pid, meter_id, count in _fetch(
                f"""
                SELECT p.pid, r.meter_id, count(DISTINCT r.value)
                FROM {table}
                JOIN metering_rollupdailydistinct r
                  ON r.account_id = p.aid AND r.dim_key = '' AND r.day >= p.d0
                 AND r.day < p.d1
                GROUP BY 1, 2
                """,
                params,
            )
        }
    result: dict[int, dict[int, Decimal]] = defaultdict(dict)
    for pid, meter_id, aggregation, count, total, top, latest in rows:
        value = _value(aggregation, count, total, top, latest, distinct.get((pid, meter_id)))
        result[pid][meter_id] = value if value is not None else Decimal(0)
    return result


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


def ledger_for_periods(
    periods: list[BillingPeriod], *, provider: str
) -> dict[int, dict[int, LedgerCell]]:
    """period id -> meter id -> the ledger's view of the cell. Event entries (count and sum
    meters) are summed by UTC day over the window and by status inside the period's exact
    bounds; period-to-date entries (max, latest, unique_count) are read for the period's
    start. Two queries."""
    table, params = _periods_table(periods)
    params["provider"] = provider
    rows = _fetch(
        f"""
        SELECT p.pid, l.meter_id, l.day, l.status, l.timestamp >= p.s AND l.timestamp < p.e,
               coalesce(l.payload->'payload'->>'stripe_customer_id', ''),
               sum(l.value), count(*)
        FROM {table}
        JOIN billing_pushledgerentry l
          ON l.provider = %(provider)s AND l.account_id = p.aid AND l.kind = 'event'
         AND l.day >= p.lo AND l.day < p.hi
        GROUP BY 1, 2, 3, 4, 5, 6
        """,
        params,
    )
    cells: dict[int, dict[int, LedgerCell]] = defaultdict(lambda: defaultdict(LedgerCell))
    for pid, meter_id, day, status, inside, customer, total, count in rows:
        cell = cells[pid][meter_id]
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
    gauges = _fetch(
        f"""
        SELECT p.pid, l.meter_id, l.status, l.value, l.day,
               coalesce(l.payload->'payload'->>'stripe_customer_id', '')
        FROM {table}
        JOIN billing_pushledgerentry l
          ON l.provider = %(provider)s AND l.account_id = p.aid AND l.kind = 'period_to_date'
         AND l.period_start = p.d0
        ORDER BY 1, 2, l.seq
        """,
        params,
    )
    for pid, meter_id, status, value, day, customer in gauges:
        cell = cells[pid][meter_id]
        cell.counts[status] = cell.counts.get(status, 0) + 1
        cell.latest_status, cell.latest_value = status, value
        if status in PushLedgerEntry.DONE:
            cell.done = value  # the newest value the provider took is the period's value
            cell.done_by_day[day] = value
            cell.done_by_customer = {customer: value}
        elif status in NOT_TAKEN + FAILED:
            cell.pending_by_day[day] = value
    for by_meter in cells.values():
        for cell in by_meter.values():
            if cell.latest_value is None:
                continue  # no period-to-date entries: an event meter
            unsent = cell.latest_value - cell.done
            if cell.latest_status in NOT_TAKEN:
                cell.pending = unsent
            elif cell.latest_status in FAILED:
                cell.failed = unsent
            elif cell.latest_status == Status.TOO_OLD:
                cell.too_old = unsent
    return cells


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
    periods: list[BillingPeriod], *, provider: str
) -> dict[int, dict[int, dict[date, Decimal]]]:
    """period id -> meter id -> UTC day of the window -> the provider's stored daily summary
    (as last pulled). One query."""
    table, params = _periods_table(periods)
    params["provider"] = provider
    rows = _fetch(
        f"""
        SELECT p.pid, s.meter_id, s.day, s.value
        FROM {table}
        JOIN billing_providerusagesummary s
          ON s.provider = %(provider)s AND s.account_id = p.aid AND s.day >= p.lo
         AND s.day < p.hi
        """,
        params,
    )
    result: dict[int, dict[int, dict[date, Decimal]]] = defaultdict(lambda: defaultdict(dict))
    for pid, meter_id, day, value in rows:
        result[pid][meter_id][day] = value
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


# --- the platforms side by side ----------------------------------------------------------------


@dataclass
class SidePlatform:
    name: str
    mismatch: object | None  # this cell's mismatch on that platform (None: none open or kept)


@dataclass
class SideDay:
    day: date  # UTC
    ours: Decimal | None
    values: list[Decimal | None]  # one per platform, in SideBySide.platforms' order
    off: bool  # a platform's day differs from ours (count and sum meters)


@dataclass
class SideBySide:
    platforms: list[SidePlatform]
    per_day: bool  # every platform reads per UTC day: the finest window they share
    days: list[SideDay] = field(default_factory=list)


def mismatch_side_by_side(*, mismatch) -> SideBySide:
    """The mismatch's cell on every platform reconciled (the primary, the read-only secondary,
    and the mismatch's own if it is neither any more): each one's mismatch for the same cell,
    and, when every platform reads per UTC day, their stored day summaries next to ours over
    the period's UTC cover days. When one only reads per billing period (Lago), the finest
    common window is the period: no days (the page says so). Three queries at most."""
    from reconciliation.models import Mismatch

    names = reconciliation_platforms()
    if mismatch.provider not in names:
        names.append(mismatch.provider)
    cells = {
        m.provider: m
        for m in Mismatch.objects.filter(
            account_id=mismatch.account_id,
            meter_id=mismatch.meter_id,
            period_id=mismatch.period_id,
            provider__in=names,
        )
    }
    side = SideBySide(
        platforms=[SidePlatform(name, cells.get(name)) for name in names],
        per_day=all(reads_per_day(name) for name in names),
    )
    if len(names) < 2 or not side.per_day:
        return side
    first, end = cover_days(mismatch.period_starts_at, mismatch.period_ends_at)
    ours = {d.day: d.ours for d in mismatch.days.filter(day__gte=first, day__lt=end)}
    stored: dict[tuple[str, date], Decimal] = {
        (provider, day): value
        for provider, day, value in ProviderUsageSummary.objects.filter(
            provider__in=names,
            account_id=mismatch.account_id,
            meter_id=mismatch.meter_id,
            day__gte=first,
            day__lt=end,
        ).values_list("provider", "day", "value")
    }
    additive = mismatch.meter.aggregation in SUM_METERS
    day = first
    while day < end:
        values = [stored.get((name, day)) for name in names]
        mine = ours.get(day)
        off = additive and any((v or Decimal(0)) != (mine or Decimal(0)) for v in values)
        side.days.append(SideDay(day=day, ours=mine, values=values, off=off))
        day += DAY
    return side
