"""Reads for the support agent's account usage page (metering.admin_dashboard).

Everything here reads the rollups (through metering.rollup_selectors) plus a bounded number of
rows (the account, the meters, at most RECENT_EVENTS events, the billing period if any), so the
number of queries does not grow with the number of events or days.

The period shown
----------------
The page shows "this period" against the previous one. Metering names no app above it (imports
flow metering <- billing), so billing *registers* a period source at start-up
(`usage_period_source_register`, called from BillingConfig.ready): a function
`(account=, at=) -> AccountPeriods | None` that answers the account's open billing period, the
one before it and the units its plan includes per meter. When no source answers (no
subscription, or billing not installed) the periods are calendar months in the account's zone.

Limits
------
An account's own usage limit for a meter lives in `Account.metadata["limits"]`, keyed by meter
code, e.g. `{"limits": {"api_calls": 1000000, "storage_gb": "250.5"}}` (a number or a decimal
string, units of the meter, per period). The page draws it, and the plan's included units, on the
cumulative chart; a malformed value is ignored (and reported on the page).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from django.db import connection
from django.utils import timezone

from metering import periods
from metering.models import Account, Meter, UsageEvent
from metering.rollup_selectors import (
    MeterDailyUsage,
    UsageSeries,
    usage_daily_by_meter,
    usage_series,
    usage_totals_between,
)

A = Meter.Aggregation

# The most recent events listed on the page.
RECENT_EVENTS = 20
# Dimension values shown by name in the breakdown; the rest are stacked as "other".
BREAKDOWN_TOP = 8
# Meters drawn on the page; more than this (rare: meters are few) are listed in the totals only.
MAX_CHARTED_METERS = 12

ADDITIVE = (A.COUNT, A.SUM)


# --- periods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsagePeriod:
    """Local days `[first, end)` in the account's zone."""

    first: date
    end: date  # exclusive
    # "billing" (a billing period), "calendar" (a calendar month, no subscription) or
    # "before_billing" (as many days just before an account's first billing period).
    kind: str
    # A billing period's own UTC bounds. They are the local midnights of `first` and `end`
    # unless the period was cut in a zone the account has since left; then its first and last
    # days are partial, and its totals are counted over exactly these instants.
    starts_at: datetime | None = None
    ends_at: datetime | None = None

    @property
    def whole_days(self) -> bool:
        return self.starts_at is None or self.ends_at is None

    def partial_edges(self, tz: str) -> bool:
        """Whether the period starts or ends in the middle of a local day of zone `tz`."""
        if self.whole_days:
            return False
        return (
            periods.day_start_utc(self.first, tz) != self.starts_at
            or periods.day_start_utc(self.end, tz) != self.ends_at
        )

    @property
    def days(self) -> list[date]:
        return list(periods.iter_days(self.first, self.end))

    @property
    def last(self) -> date:
        return self.end - periods.DAY


@dataclass(frozen=True)
class AccountPeriods:
    current: UsagePeriod
    previous: UsagePeriod
    # The plan the current period bills on ("" for calendar months).
    plan_name: str = ""
    # Units each meter's price includes per period, by meter code.
    included_units: dict[str, Decimal] = field(default_factory=dict)


PeriodSource = Callable[..., AccountPeriods | None]
_period_sources: list[PeriodSource] = []


def usage_period_source_register(source: PeriodSource) -> None:
    """Register `source(account=, at=) -> AccountPeriods | None`; the first that answers wins.
    Registering the same function twice is a no-op (AppConfig.ready may run more than once)."""
    if source not in _period_sources:
        _period_sources.append(source)


def calendar_month_periods(*, account: Account, at: datetime | None = None) -> AccountPeriods:
    """This calendar month and the one before, in the account's zone."""
    today = periods.local_date(at or timezone.now(), account.timezone)
    first = today.replace(day=1)
    end = (first + periods.DAY * 32).replace(day=1)
    previous_first = (first - periods.DAY).replace(day=1)
    return AccountPeriods(
        current=UsagePeriod(first, end, "calendar"),
        previous=UsagePeriod(previous_first, first, "calendar"),
    )


def account_periods(*, account: Account, at: datetime | None = None) -> AccountPeriods:
    """The account's current and previous periods: billing periods when a registered source
    (billing) knows them, else calendar months in the account's zone."""
    for source in _period_sources:
        found = source(account=account, at=at)
        if found is not None:
            return found
    return calendar_month_periods(account=account, at=at)


# --- limits ----------------------------------------------------------------------------------


def account_limits(*, account: Account) -> tuple[dict[str, Decimal], list[str]]:
    """(limits by meter code, problems) from `Account.metadata["limits"]`."""
    raw = (account.metadata or {}).get("limits")
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, ['metadata["limits"] is not an object of meter code -> limit; ignored.']
    limits: dict[str, Decimal] = {}
    problems: list[str] = []
    for code, value in raw.items():
        try:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise InvalidOperation
            limit = Decimal(str(value))
            if not limit.is_finite() or limit < 0:
                raise InvalidOperation
        except InvalidOperation:
            problems.append(f'metadata["limits"][{code!r}] = {value!r} is not a number; ignored.')
            continue
        limits[str(code)] = limit
    return limits, problems


# --- the page's data -------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterPanel:
    """One meter over the current period (every local day) against the previous one."""

    meter: Meter
    current: dict[date, Decimal | None]  # None for days after today
    previous: list[tuple[date, Decimal | None]]  # aligned by position: day i of each period
    current_total: Decimal | None  # to date (the period's days so far)
    previous_total: Decimal | None
    to_date: dict[date, Decimal | None]  # usage from the period's start through each day
    included_units: Decimal | None
    limit: Decimal | None

    @property
    def cap(self) -> Decimal | None:
        """What the usage is measured against: the account's limit, else included units."""
        return self.limit if self.limit is not None else self.included_units

    @property
    def share_of_cap(self) -> Decimal | None:
        cap = self.cap
        if cap is None or cap == 0 or self.current_total is None:
            return None
        return (self.current_total / cap * 100).quantize(Decimal("0.1"))


@dataclass(frozen=True)
class RecentEvent:
    id: int
    transaction_id: str
    meter_code: str
    meter_id: int
    occurred_at: datetime
    local_day: date
    value: Decimal | None
    unique_value: str
    kind: str
    is_late: bool


@dataclass(frozen=True)
class Breakdown:
    meter: Meter
    dimension: str
    series: UsageSeries
    top: int
    # True when some values were grouped into "other" for display (more than `top` values).
    grouped_for_display: bool


@dataclass(frozen=True)
class AccountUsageDashboard:
    account: Account
    periods: AccountPeriods
    today: date
    panels: list[MeterPanel]  # meters with usage in either period, or priced, or limited
    other_meters: list[MeterPanel]  # past MAX_CHARTED_METERS: in the table only
    breakdown: Breakdown | None
    breakdown_choices: list[tuple[str, list[str]]]  # (meter code, its dimensions)
    recent_events: list[RecentEvent]
    day_bounds: dict[date, tuple[datetime, datetime]]  # current period's days, in UTC
    notes: list[str]


def _to_date(meter: Meter, days: dict[date, Decimal | None], today: date) -> dict:
    """Running usage through each day up to today, per the aggregation (count/sum add up,
    max keeps the greatest, latest keeps the last value); unique_count is done in SQL."""
    running: Decimal | None = None
    out: dict[date, Decimal | None] = {}
    for day in sorted(days):
        if day > today:
            out[day] = None
            continue
        value = days[day]
        if meter.aggregation in ADDITIVE:
            running = (running or Decimal(0)) + (value or Decimal(0))
        elif meter.aggregation == A.MAX:
            if value is not None:
                running = value if running is None else max(running, value)
        elif value is not None:  # latest
            running = value
        out[day] = running
    return out


def _unique_to_date(
    *, account: Account, meters: Sequence[Meter], period: UsagePeriod, today: date
) -> dict[int, dict[date, Decimal | None]]:
    """Distinct values from the period's start through each day, exact: each value counts on
    the first day it was seen. One query for all unique_count meters."""
    ids = [m.pk for m in meters if m.aggregation == A.UNIQUE_COUNT]
    if not ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT meter_id, first_day, count(*) FROM (
                SELECT meter_id, value, min(day) AS first_day
                FROM metering_rollupdailydistinct
                WHERE account_id = %(a)s AND meter_id = ANY(%(ids)s) AND dim_key = ''
                  AND day >= %(lo)s AND day < %(hi)s
                GROUP BY meter_id, value
            ) firsts
            GROUP BY meter_id, first_day
            """,
            {"a": account.pk, "ids": ids, "lo": period.first, "hi": period.end},
        )
        rows = cursor.fetchall()
    new_per_day: dict[int, dict[date, int]] = {}
    for meter_id, day, count in rows:
        new_per_day.setdefault(meter_id, {})[day] = count
    out: dict[int, dict[date, Decimal | None]] = {}
    for meter_id in ids:
        running = 0
        series: dict[date, Decimal | None] = {}
        for day in period.days:
            if day > today:
                series[day] = None
                continue
            running += new_per_day.get(meter_id, {}).get(day, 0)
            series[day] = Decimal(running)
        out[meter_id] = series
    return out


def _has_usage(row: MeterDailyUsage) -> bool:
    return any(value not in (None, 0) for value in row.days.values()) or row.total not in (None, 0)


def recent_events(
    *, account: Account, meters: Sequence[Meter], limit: int = RECENT_EVENTS
) -> list[RecentEvent]:
    """The account's `limit` most recent events (by occurred_at) over the given meters.

    One query: per meter, a backward scan of usage_event_acct_time (account, meter,
    occurred_at) takes at most `limit` rows, so an account with millions of events costs the
    same as one with ten.
    """
    if not meters:
        return []
    by_id = {m.pk: m for m in meters}
    rows = UsageEvent.objects.raw(
        """
        SELECT e.id, e.transaction_id, e.meter_id, e.occurred_at, e.value, e.unique_value,
               e.kind, e.is_late, e.account_id
        FROM unnest(%s::bigint[]) AS m(id)
        CROSS JOIN LATERAL (
            SELECT id, transaction_id, meter_id, occurred_at, value, unique_value, kind,
                   is_late, account_id
            FROM metering_usageevent
            WHERE account_id = %s AND meter_id = m.id
            ORDER BY occurred_at DESC
            LIMIT %s
        ) e
        ORDER BY e.occurred_at DESC, e.id DESC
        LIMIT %s
        """,
        [list(by_id), account.pk, limit, limit],
    )
    return [
        RecentEvent(
            id=row.id,
            transaction_id=row.transaction_id,
            meter_code=by_id[row.meter_id].code,
            meter_id=row.meter_id,
            occurred_at=row.occurred_at,
            local_day=periods.local_date(row.occurred_at, account.timezone),
            value=row.value,
            unique_value=row.unique_value,
            kind=row.kind,
            is_late=row.is_late,
        )
        for row in rows
    ]


def _breakdown(
    *,
    account: Account,
    panels: Sequence[MeterPanel],
    period: UsagePeriod,
    meter_code: str | None,
    dimension: str | None,
    top: int,
    notes: list[str],
) -> Breakdown | None:
    with_dims = [p.meter for p in panels if p.meter.dimensions]
    if not with_dims:
        return None
    meter = next((m for m in with_dims if m.code == meter_code), None)
    if meter_code and meter is None:
        notes.append(f"Meter {meter_code!r} has no usage here or no dimensions; showing another.")
    meter = meter or with_dims[0]
    if dimension and dimension not in meter.dimensions:
        notes.append(f"Meter {meter.code} has no dimension {dimension!r}; showing another.")
        dimension = None
    dimension = dimension or meter.dimensions[0]
    series = usage_series(
        account=account,
        meter=meter,
        start=period.first,
        end=period.end,
        granularity="day",
        group_by=dimension,
        top=top,
    )
    named = [g for g in series.group_totals if g != "other"]
    # "other" holds display-grouped values when `top` names were shown and more remained; the
    # rollup's own folding is reported separately (series.folded).
    grouped = "other" in series.group_totals and len(named) >= top
    return Breakdown(meter, dimension, series, top, grouped)


def _exact_totals(
    account: Account, meters: list[Meter], period: UsagePeriod
) -> dict[int, Decimal | None]:
    """Totals over the period's own instants when they are not whole local days, else {}."""
    if not meters or not period.partial_edges(account.timezone):
        return {}
    return usage_totals_between(
        account=account, meters=meters, start=period.starts_at, end=period.ends_at
    )


def account_usage_dashboard(
    *,
    account: Account,
    at: datetime | None = None,
    meter_code: str | None = None,
    dimension: str | None = None,
    top: int = BREAKDOWN_TOP,
    recent: int = RECENT_EVENTS,
) -> AccountUsageDashboard:
    """Everything the account usage page shows, from rollups and a bounded number of rows."""
    at = at or timezone.now()
    today = periods.local_date(at, account.timezone)
    found = account_periods(account=account, at=at)
    current, previous = found.current, found.previous
    limits, notes = account_limits(account=account)

    meters = list(Meter.objects.order_by("code"))
    now_rows = usage_daily_by_meter(
        account=account, first=current.first, end=current.end, meters=meters
    )
    before_rows = usage_daily_by_meter(
        account=account, first=previous.first, end=previous.end, meters=meters
    )
    before = {row.meter.pk: row for row in before_rows}
    shown = [
        row
        for row in now_rows
        if _has_usage(row)
        or _has_usage(before[row.meter.pk])
        or row.meter.code in found.included_units
        or row.meter.code in limits
    ]
    shown_meters = [row.meter for row in shown]
    unique_to_date = _unique_to_date(
        account=account, meters=shown_meters, period=current, today=today
    )
    # A period cut in the account's former zone: its totals over its own instants, exactly.
    exact_now = _exact_totals(account, shown_meters, current)
    exact_before = _exact_totals(account, shown_meters, previous)
    if exact_now or exact_before:
        notes.append(
            "A period here was cut in the account's former time zone: its first and last days "
            "are partial, and its totals count exactly its own instants."
        )
    panels = []
    for row in shown:
        meter = row.meter
        prev = before[meter.pk]
        current_days = {d: (None if d > today else v) for d, v in row.days.items()}
        to_date = unique_to_date.get(meter.pk) or _to_date(meter, row.days, today)
        if exact_now:
            to_date = exact_now[meter.pk]
        panels.append(
            MeterPanel(
                meter=meter,
                current=current_days,
                previous=sorted(prev.days.items()),
                # Days after today hold nothing, so the period's total is its total to date.
                current_total=exact_now[meter.pk] if exact_now else row.total,
                previous_total=exact_before[meter.pk] if exact_before else prev.total,
                to_date=to_date,
                included_units=found.included_units.get(meter.code),
                limit=limits.get(meter.code),
            )
        )
    charted, other_meters = panels[:MAX_CHARTED_METERS], panels[MAX_CHARTED_METERS:]
    if other_meters:
        notes.append(
            f"{len(panels)} meters have usage; the charts show the first {MAX_CHARTED_METERS} "
            "(all are in the totals table)."
        )
    breakdown = _breakdown(
        account=account,
        panels=charted,
        period=current,
        meter_code=meter_code,
        dimension=dimension,
        top=top,
        notes=notes,
    )
    return AccountUsageDashboard(
        account=account,
        periods=found,
        today=today,
        panels=charted,
        other_meters=other_meters,
        breakdown=breakdown,
        breakdown_choices=[
            (p.meter.code, list(p.meter.dimensions)) for p in charted if p.meter.dimensions
        ],
        recent_events=recent_events(account=account, meters=meters, limit=recent),
        day_bounds={d: periods.day_bounds_utc(d, account.timezone) for d in current.days},
        notes=notes,
    )
