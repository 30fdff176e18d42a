"""The projected invoice: an account's open billing period priced so far and at its end.

Usage to date comes from metering's daily rollups over the period's local days up to and
including the as-of day (exact; `unique_count` is the number of distinct values over the whole
period, never a sum of daily counts). Both the usage so far and the forecast at period end are
priced by the pricing engine (billing.pricing), so tiers, included units, the plan fee and the
minimum-commitment true-up follow the very rules the closed invoice will.

The forecast, per meter aggregation:

- count and sum (additive): the run rate is weekday-aware. For each weekday, the mean usage of
  that weekday over the last 28 local days before the as-of day (each weekday appears four
  times), measured from the first day with usage in that window, so a meter that started
  recently is not diluted by the days before it. A weekday without a sample in that history
  takes the mean over all its days. The forecast adds the mean of each day left in the period
  after the as-of day; the as-of day itself, when still running, is assumed to reach at least
  its weekday's mean (what it has used so far counts; the rest of a typical day is added).
  The forecast keeps the precision of the data it comes from (count meters: whole units),
  rounded half up once.
- max and latest: billed on the highest or latest value, which usage to come cannot be
  predicted to change; the forecast is the current value.
- unique_count: conservative, the forecast is the distinct count so far. New distinct values
  cannot be told from returning ones in daily counts, so any run rate would overcount.

"To date" amounts are what the invoice would be if the period closed after the as-of day: the
plan fee and the minimum-commitment true-up included.

Everything is Decimal or int; nothing here is a float.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

from django.utils import timezone

from billing import explain
from billing.models import BillingPeriod
from billing.periods import is_whole_local_days, local_date, local_days_of, local_midnight_utc
from billing.pricing import InvoiceAmount, LineAmount, LineKind, PriceSpec, price_invoice
from billing.selectors import (
    period_open,
    period_previous,
    period_usage,
    plan_prices,
    subscription_current,
)
from metering.models import ROLLUP_OTHER, Account, Meter
from metering.rollup_selectors import usage_daily_by_meter, usage_series, usage_totals_between

FORECAST_LOOKBACK_DAYS = 28
ZERO = Decimal(0)
ONE_DAY = dt.timedelta(days=1)
MAX_FORECAST_PLACES = 12

# Means divide; 60 significant digits leave the one final rounding (to the data's precision)
# as the only one that matters.
_FORECAST = decimal.Context(prec=60, rounding=ROUND_HALF_UP)

A = Meter.Aggregation
ADDITIVE = (A.COUNT, A.SUM)


class ForecastMethod(StrEnum):
    WEEKDAY_MEAN = "weekday_mean"
    CURRENT_VALUE = "current_value"
    DISTINCT_SO_FAR = "distinct_so_far"


class ProjectionUnavailable(Exception):
    """No projection can be made; `code` is stable and machine-readable."""

    code = "projection_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoActiveSubscription(ProjectionUnavailable):
    code = "no_active_subscription"


class NoOpenPeriod(ProjectionUnavailable):
    code = "no_open_period"


# --- credits on the period (a registry: adjustments registers its source, no upward import) ----


@dataclass(frozen=True)
class PeriodCredit:
    """A credit issued on a billing period (by a higher app, e.g. an adjustment)."""

    title: str
    amount_minor: int  # positive: in the customer's favour
    explanation: str = ""
    # The total may go below zero (the rest carried to the next invoice) only when the
    # policy that issued the credit allows a carried balance.
    allow_carried_balance: bool = False


PeriodCreditSource = Callable[[BillingPeriod], Sequence[PeriodCredit]]
_credit_sources: list[PeriodCreditSource] = []


def period_credit_source_register(source: PeriodCreditSource) -> None:
    """Register a function answering the credits of a billing period (idempotent)."""
    if source not in _credit_sources:
        _credit_sources.append(source)


def period_credits(*, period: BillingPeriod) -> list[PeriodCredit]:
    return [credit for source in _credit_sources for credit in source(period)]


def credit_off(*, total_minor: int, credit_minor: int, allow_carried_balance: bool) -> int:
    """How much of a credit comes off a total: all of it with a carried balance, otherwise
    only down to zero."""
    if allow_carried_balance:
        return credit_minor
    return max(0, min(credit_minor, total_minor))


# --- the forecast, pure ----------------------------------------------------------------------


def weekday_means(history: Mapping[dt.date, Decimal]) -> dict[int, Decimal]:
    """Mean usage per weekday (0 = Monday) over the history's days.

    A weekday with no day in the history takes the mean over all its days; an empty history
    gives zero for every weekday.
    """
    with decimal.localcontext(_FORECAST):
        if not history:
            return dict.fromkeys(range(7), ZERO)
        overall = sum(history.values(), ZERO) / len(history)
        means = {}
        for weekday in range(7):
            values = [value for day, value in history.items() if day.weekday() == weekday]
            means[weekday] = sum(values, ZERO) / len(values) if values else overall
        return means


def forecast_remaining(
    *,
    means: Mapping[int, Decimal],
    on: dt.date,
    on_so_far: Decimal,
    on_complete: bool,
    end_date: dt.date,
) -> Decimal:
    """Units still expected in the period after what was used up to and including day `on`.

    Each day after `on` up to `end_date` (exclusive) adds its weekday's mean; day `on`, unless
    complete, adds what a typical such day has beyond what it used so far (never below zero).
    Exact in the forecast context; the caller rounds once.
    """
    with decimal.localcontext(_FORECAST):
        remaining = ZERO
        if not on_complete:
            remaining += max(ZERO, means[on.weekday()] - on_so_far)
        day = on + ONE_DAY
        while day < end_date:
            remaining += means[day.weekday()]
            day += ONE_DAY
        return remaining


def places_of(*values: Decimal | None) -> int:
    """Decimal places the data carries (12 at most): the forecast keeps no more than that."""
    places = 0
    for value in values:
        if value:
            exponent = value.normalize(_FORECAST).as_tuple().exponent
            places = max(places, -exponent if isinstance(exponent, int) else 0)
    return min(places, MAX_FORECAST_PLACES)


def history_window(daily: Mapping[dt.date, Decimal | None]) -> dict[dt.date, Decimal]:
    """The run-rate history: the days from the first with usage on (earlier ones dropped)."""
    days = sorted(day for day, value in daily.items() if value)
    if not days:
        return {}
    first = days[0]
    return {day: value or ZERO for day, value in daily.items() if day >= first}


# --- the result --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopDimension:
    """The first dimension's biggest value over the period so far, e.g. endpoint /v1/search."""

    dimension: str
    value: str
    units: Decimal


@dataclass(frozen=True)
class ProjectedLine:
    """One line of the projected invoice: amounts so far and at period end, in minor units."""

    kind: LineKind
    title: str
    currency: str
    amount_to_date_minor: int
    projected_amount_minor: int
    # Usage lines only.
    meter_code: str = ""
    aggregation: str = ""
    unit: str = ""
    units_to_date: Decimal | None = None
    forecast_units: Decimal | None = None
    included_units: Decimal | None = None  # the price's allowance per period
    forecast_method: ForecastMethod | None = None
    usage_to_date: LineAmount | None = None
    usage_projected: LineAmount | None = None
    top: TopDimension | None = None
    explanation: str = ""

    @property
    def tiers_to_date(self):
        return self.usage_to_date.tiers if self.usage_to_date else ()

    @property
    def tiers_projected(self):
        return self.usage_projected.tiers if self.usage_projected else ()

    @property
    def spec(self) -> PriceSpec | None:
        return self.usage_to_date.spec if self.usage_to_date else None


@dataclass(frozen=True)
class PreviousPeriod:
    start_date: dt.date
    end_date: dt.date
    state: str
    total_minor: int
    # "invoiced": the closed period's billed total; "usage": priced now from its rollups.
    source: str
    # What it was priced on, for a line-by-line comparison (billing.bill_change) without
    # reading it again: its plan and its usage per meter code (a closed period's invoiced
    # quantities, else the rollups').
    plan_id: int | None = None
    quantities: Mapping[str, Decimal] | None = None


@dataclass(frozen=True)
class ProjectedInvoice:
    account_id: int
    account_external_id: str
    timezone: str
    plan_code: str
    plan_name: str
    period_id: int
    period_start: dt.date
    period_end: dt.date  # exclusive
    period_state: str
    on: dt.date  # the as-of local day, counted in "to date"
    on_complete: bool
    currency: str
    lines: tuple[ProjectedLine, ...]
    to_date_total_minor: int
    projected_total_minor: int
    minimum_commitment_minor: int
    previous: PreviousPeriod | None
    change_minor: int | None
    change_percent: Decimal | None  # one decimal place, half up; None without a base
    generated_at: dt.datetime
    summary: str = ""
    plan_id: int | None = None

    @property
    def last_day(self) -> dt.date:
        return self.period_end - ONE_DAY

    @property
    def days_in_period(self) -> int:
        return (self.period_end - self.period_start).days

    @property
    def days_elapsed(self) -> int:
        return (self.on - self.period_start).days + 1

    @property
    def usage_lines(self) -> tuple[ProjectedLine, ...]:
        return tuple(line for line in self.lines if line.kind is LineKind.USAGE)


# --- building it -------------------------------------------------------------------------------


def change_percent(*, current_minor: int, base_minor: int | None) -> Decimal | None:
    """(current - base) / base in percent, one decimal place, half up; None without a base."""
    if not base_minor:
        return None
    with decimal.localcontext(_FORECAST):
        percent = Decimal(current_minor - base_minor) * 100 / Decimal(base_minor)
        return percent.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def _top_dimension(
    *, account: Account, meter: Meter, first: dt.date, end: dt.date
) -> TopDimension | None:
    dimensions = meter.dimensions or []
    if meter.aggregation not in (*ADDITIVE, A.UNIQUE_COUNT) or not dimensions:
        return None
    dimension = dimensions[0]
    # top=2: the biggest stored value may be "" (events without the property), which names
    # nothing a customer would recognise; the next one then does.
    series = usage_series(
        account=account, meter=meter, start=first, end=end, group_by=dimension, top=2
    )
    for value, units in series.group_totals.items():
        if value not in ("", ROLLUP_OTHER) and units:
            return TopDimension(dimension=dimension, value=value, units=units)
    return None


def _previous(period: BillingPeriod) -> PreviousPeriod | None:
    previous = period_previous(period=period)
    if previous is None:
        return None
    plan = previous.subscription.plan
    if previous.state == BillingPeriod.State.CLOSED:
        total, source = previous.total_minor, "invoiced"
        quantities = {
            line["meter"]: Decimal(line["quantity"])
            for line in previous.invoice_lines or []
            if line.get("meter") and line.get("quantity") is not None
        }
    else:
        quantities = period_usage(period=previous)
        invoice = price_invoice(
            lines=[
                (spec, quantities.get(price.meter.code, ZERO))
                for price, spec in plan_prices(plan=plan)
            ],
            currency=previous.currency,
            flat_fee_minor=plan.flat_fee_minor,
            minimum_commitment_minor=plan.minimum_commitment_minor,
        )
        total, source = invoice.total_minor, "usage"
    return PreviousPeriod(
        start_date=previous.start_date,
        end_date=previous.end_date,
        state=previous.state,
        total_minor=total,
        source=source,
        plan_id=plan.pk,
        quantities=quantities,
    )


def _line_of(invoice: InvoiceAmount, kind: LineKind):
    return next((line for line in invoice.lines if line.kind is kind), None)


def projected_invoice_build(
    *,
    account: Account,
    on: dt.date | None = None,
    now: dt.datetime | None = None,
    with_top: bool = True,
) -> ProjectedInvoice:
    """The projected invoice of the account's open period containing the local day `on`
    (default: today in the account's zone, as of `now`).

    Usage to date is exact over the period's own instants, also for a period cut in a zone the
    account has since left; its days (the forecast's calendar) are the local days of the
    account's current zone it touches, so the forecast treats its partial first and last days
    as whole days (an estimate, never billed). `with_top=False` leaves out each line's biggest
    dimension value (`ProjectedLine.top`, its explanation's "9.4M of them to /v1/search"): four
    or five queries per priced meter with dimensions that a page not showing the explanations
    (the account hub) does not need.

    Raises NoActiveSubscription when no subscription covers the day and NoOpenPeriod when one
    does but its period is not open (not opened yet, or already being invoiced). Reads only
    rollups and billing rows: about a dozen queries plus four or five per priced meter with
    dimensions.
    """
    now = now or timezone.now()
    tz = account.timezone
    today = local_date(now, tz)
    on = on or today
    if on > today:
        raise ValueError(f"{on} has not begun yet in {tz}; project from today or before.")
    on_complete = on < today
    # An instant inside day `on`: now for today, else the day's last microsecond.
    at = (
        now
        if not on_complete
        else local_midnight_utc(on + ONE_DAY, tz) - dt.timedelta(microseconds=1)
    )
    period = period_open(account=account, at=at)
    if period is None:
        if subscription_current(account=account, at=at) is None:
            raise NoActiveSubscription(
                f"Account {account.external_id} has no subscription covering {on}."
            )
        raise NoOpenPeriod(
            f"Account {account.external_id} has no open billing period on {on}: it is not "
            "opened yet or already being invoiced."
        )
    plan = period.subscription.plan
    prices = plan_prices(plan=plan)
    meters = [price.meter for price, _ in prices]
    # The period's days in the account's zone: its own dates, unless it was cut in a zone the
    # account has since left (then its first and last days here are partial, see
    # billing.services.periods). Usage to date is always counted over the period's instants.
    first_day, end_day = local_days_of(starts_at=period.starts_at, ends_at=period.ends_at, tz=tz)
    to_date_end = min(on + ONE_DAY, end_day)
    exact_to_date = None
    if meters and not is_whole_local_days(
        starts_at=period.starts_at, ends_at=period.ends_at, tz=tz
    ):
        exact_to_date = usage_totals_between(
            account=account,
            meters=meters,
            start=period.starts_at,
            end=min(local_midnight_utc(to_date_end, tz), period.ends_at),
        )

    so_far = {
        usage.meter.pk: usage
        for usage in (
            usage_daily_by_meter(account=account, first=first_day, end=to_date_end, meters=meters)
            if meters
            else []
        )
    }
    additive = [meter for meter in meters if meter.aggregation in ADDITIVE]
    history = {
        usage.meter.pk: usage
        for usage in (
            usage_daily_by_meter(
                account=account,
                first=on - dt.timedelta(days=FORECAST_LOOKBACK_DAYS),
                end=on,
                meters=additive,
            )
            if additive
            else []
        )
    }

    quantities: list[tuple[PriceSpec, Decimal]] = []
    forecasts: list[tuple[PriceSpec, Decimal]] = []
    methods: list[ForecastMethod] = []
    tops: list[TopDimension | None] = []
    for price, spec in prices:
        meter = price.meter
        usage = so_far[meter.pk]
        units = (usage.total if exact_to_date is None else exact_to_date[meter.pk]) or ZERO
        if meter.aggregation in ADDITIVE:
            window = history_window(history[meter.pk].days)
            remaining = forecast_remaining(
                means=weekday_means(window),
                on=on,
                on_so_far=usage.days.get(on) or ZERO,
                on_complete=on_complete,
                end_date=end_day,
            )
            places = places_of(units, *window.values())
            forecast = units + remaining.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
            method = ForecastMethod.WEEKDAY_MEAN
        elif meter.aggregation == A.UNIQUE_COUNT:
            forecast, method = units, ForecastMethod.DISTINCT_SO_FAR
        else:
            forecast, method = units, ForecastMethod.CURRENT_VALUE
        quantities.append((spec, units))
        forecasts.append((spec, forecast))
        methods.append(method)
        tops.append(
            _top_dimension(account=account, meter=meter, first=first_day, end=to_date_end)
            if units and with_top
            else None
        )

    def priced(lines: list[tuple[PriceSpec, Decimal]]) -> InvoiceAmount:
        return price_invoice(
            lines=lines,
            currency=period.currency,
            flat_fee_minor=plan.flat_fee_minor,
            minimum_commitment_minor=plan.minimum_commitment_minor,
        )

    to_date = priced(quantities)
    projected = priced(forecasts)
    to_date_usage = [line for line in to_date.lines if line.kind is LineKind.USAGE]
    projected_usage = [line for line in projected.lines if line.kind is LineKind.USAGE]

    lines: list[ProjectedLine] = []
    fee = _line_of(projected, LineKind.PLAN_FEE)
    if fee is not None:
        lines.append(
            ProjectedLine(
                kind=LineKind.PLAN_FEE,
                title=fee.title,
                currency=period.currency,
                amount_to_date_minor=fee.amount_minor,
                projected_amount_minor=fee.amount_minor,
            )
        )
    for (price, spec), now_line, end_line, method, top in zip(
        prices, to_date_usage, projected_usage, methods, tops, strict=True
    ):
        lines.append(
            ProjectedLine(
                kind=LineKind.USAGE,
                title=spec.title,
                currency=period.currency,
                amount_to_date_minor=now_line.amount_minor,
                projected_amount_minor=end_line.amount_minor,
                meter_code=price.meter.code,
                aggregation=price.meter.aggregation,
                unit=spec.unit_label,
                units_to_date=now_line.usage.quantity,
                forecast_units=end_line.usage.quantity,
                included_units=spec.included_units,
                forecast_method=method,
                usage_to_date=now_line.usage,
                usage_projected=end_line.usage,
                top=top,
            )
        )
    if plan.minimum_commitment_minor:
        lines.append(
            ProjectedLine(
                kind=LineKind.MINIMUM_COMMITMENT,
                title="Minimum commitment true-up",
                currency=period.currency,
                amount_to_date_minor=to_date.true_up_minor,
                projected_amount_minor=projected.true_up_minor,
            )
        )

    to_date_total = to_date.total_minor
    projected_total = projected.total_minor
    for credit in period_credits(period=period):
        off_to_date = credit_off(
            total_minor=to_date_total,
            credit_minor=credit.amount_minor,
            allow_carried_balance=credit.allow_carried_balance,
        )
        off_projected = credit_off(
            total_minor=projected_total,
            credit_minor=credit.amount_minor,
            allow_carried_balance=credit.allow_carried_balance,
        )
        to_date_total -= off_to_date
        projected_total -= off_projected
        lines.append(
            ProjectedLine(
                kind=LineKind.CREDIT,
                title=credit.title,
                currency=period.currency,
                amount_to_date_minor=-off_to_date,
                projected_amount_minor=-off_projected,
                explanation=credit.explanation,
            )
        )

    previous = _previous(period)
    base = previous.total_minor if previous else None
    invoice = ProjectedInvoice(
        account_id=account.pk,
        account_external_id=account.external_id,
        timezone=tz,
        plan_code=plan.code,
        plan_name=plan.name,
        plan_id=plan.pk,
        period_id=period.pk,
        period_start=first_day,
        period_end=end_day,
        period_state=period.state,
        on=on,
        on_complete=on_complete,
        currency=period.currency,
        lines=(),
        to_date_total_minor=to_date_total,
        projected_total_minor=projected_total,
        minimum_commitment_minor=plan.minimum_commitment_minor,
        previous=previous,
        change_minor=None if base is None else projected_total - base,
        change_percent=change_percent(current_minor=projected_total, base_minor=base),
        generated_at=now,
    )
    context = explain.ExplainContext(
        last_day=invoice.last_day,
        plan_name=plan.name,
        minimum_commitment_minor=plan.minimum_commitment_minor,
        to_date_subtotal_minor=to_date.subtotal_minor,
        projected_subtotal_minor=projected.subtotal_minor,
    )
    explained = tuple(
        replace(line, explanation=explain.explain_line(line, context=context)) for line in lines
    )
    invoice = replace(invoice, lines=explained)
    return replace(invoice, summary=explain.explain_summary(invoice))
