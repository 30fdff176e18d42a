"""Plain-language explanations of a projected invoice, one per line, for a support agent to
read to a customer:

    "12.4M API calls so far, 9.4M of them to /v1/search; the first 1M are included; the next
    9M at $0.0004 each; the next 2.4M at $0.0002 each: $4,080.00 so far. At the current pace
    about 18.1M by Mar 31, about $5,220.00."

Quantities are humanised (12.4M: one decimal, half up); money is exact to the cent (the line's
amount in minor units, rounded once by the engine); unit prices are shown with every digit they
have ($0.0004). Pure functions over billing.projection's dataclasses: no database.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from billing.money import format_amount, format_money
from billing.pricing import LineKind, PriceModel, TierLine, format_quantity
from metering.models import Meter

if TYPE_CHECKING:
    from billing.projection import ProjectedInvoice, ProjectedLine

A = Meter.Aggregation
# billing.projection.ForecastMethod's values (a StrEnum, so they compare equal); spelled out here
# because billing.projection imports this module.
WEEKDAY_MEAN = "weekday_mean"
DISTINCT_SO_FAR = "distinct_so_far"

_WIDE = decimal.Context(prec=60, rounding=ROUND_HALF_UP)
_SUFFIXES = ((Decimal(10) ** 3, "K"), (Decimal(10) ** 6, "M"), (Decimal(10) ** 9, "B"))
_SUFFIXES += ((Decimal(10) ** 12, "T"),)
# Below this a quantity is written out in full (9,999), from it on shortened (10K).
SHORTEN_FROM = Decimal(10_000)

# How "9.4M of them ___ <value>" reads for a dimension.
_TO = {"endpoint", "path", "route", "url", "operation", "method", "host", "api"}
_IN = {"region", "zone", "country", "location", "datacenter", "data_center", "cluster"}


def humanize_quantity(value: Decimal) -> str:
    """12_400_000 -> '12.4M', 1_000_000 -> '1M', 45_300 -> '45.3K', 9_999 -> '9,999',
    1234.567 -> '1,234.57' (one decimal, half up, past 10,000; two places below)."""
    if value < 0:
        return "-" + humanize_quantity(-value)
    with decimal.localcontext(_WIDE):
        if value < SHORTEN_FROM:
            return format_quantity(value.quantize(Decimal("0.01")) if value % 1 else value)
        chosen = None
        for size, suffix in _SUFFIXES:
            if value >= size:
                chosen = (size, suffix)
        size, suffix = chosen
        short = (value / size).quantize(Decimal("0.1"))
        bigger = [(s, x) for s, x in _SUFFIXES if s > size]
        if short >= 1000 and bigger:  # 999,960 is '1M', not '1000K'
            size, suffix = bigger[0]
            short = (value / size).quantize(Decimal("0.1"))
        return f"{format_quantity(short)}{suffix}"


def short_date(day: dt.date) -> str:
    """'Mar 31' (English month abbreviation, no leading zero)."""
    return f"{day:%b} {day.day}"


def _of_them(dimension: str, value: str) -> str:
    key = dimension.lower()
    if key in _TO or value.startswith("/"):
        return f"to {value}"
    if key in _IN:
        return f"in {value}"
    return f"with {dimension} {value}"


@dataclass(frozen=True)
class ExplainContext:
    last_day: dt.date
    plan_name: str
    minimum_commitment_minor: int
    # The invoices' totals before the minimum-commitment true-up.
    to_date_subtotal_minor: int
    projected_subtotal_minor: int


def _each(price: Decimal, currency: str) -> str:
    return f"at {format_amount(price, currency)} each"


def _tier_fee(tier: TierLine, currency: str) -> str:
    return f" plus a {format_amount(tier.flat_fee, currency)} tier fee" if tier.flat_fee else ""


def _volume_range(tier: TierLine) -> str:
    if tier.to_units is None:
        return f"more than {humanize_quantity(tier.from_units)}" if tier.from_units else "any"
    if not tier.from_units:
        return f"up to {humanize_quantity(tier.to_units)}"
    return f"{humanize_quantity(tier.from_units)} to {humanize_quantity(tier.to_units)}"


def _charges(line: ProjectedLine) -> tuple[str, list[str]]:
    """How the usage so far is charged (after the allowance): a suffix for the opening clause
    ("at $0.50 each", for a plain per-unit price) and the clauses that follow it."""
    usage = line.usage_to_date
    spec = usage.spec
    cur = line.currency
    billed = usage.units_billed
    included = bool(usage.included_units)
    inline = ""
    clauses: list[str] = []
    if billed:
        if spec.model is PriceModel.PER_UNIT and included:
            clauses.append(f"the next {humanize_quantity(billed)} {_each(spec.unit_price, cur)}")
        elif spec.model is PriceModel.PER_UNIT:
            inline = f" {_each(spec.unit_price, cur)}"
        elif spec.model is PriceModel.GRADUATED:
            for position, tier in enumerate(usage.tiers):
                lead = "the first" if position == 0 and not included else "the next"
                if tier.unit_price or tier.flat_fee:
                    rate = _each(tier.unit_price, cur) + _tier_fee(tier, cur)
                else:
                    rate = "free"
                clauses.append(f"{lead} {humanize_quantity(tier.units)} {rate}")
        elif spec.model is PriceModel.VOLUME:
            for tier in usage.tiers:
                clauses.append(
                    f"all {humanize_quantity(tier.units)} billed {_each(tier.unit_price, cur)}"
                    f"{_tier_fee(tier, cur)}, the rate for {_volume_range(tier)}"
                )
        else:  # package
            packages = usage.packages or 0
            plural = "s" if packages != 1 else ""
            clauses.append(
                f"{humanize_quantity(billed)} make {packages} package{plural} of "
                f"{format_quantity(Decimal(spec.package_size))} "
                f"{_each(spec.package_price, cur)}"
            )
    if spec.flat_fee:
        clauses.append(f"plus a fixed {format_amount(spec.flat_fee, cur)} for this line")
    return inline, clauses


def _so_far(line: ProjectedLine) -> str:
    quantity = humanize_quantity(line.units_to_date)
    if line.aggregation == A.MAX:
        head = f"A peak of {quantity} {line.unit} so far"
    elif line.aggregation == A.LATEST:
        head = f"{quantity} {line.unit} at the latest reading"
    else:
        head = f"{quantity} {line.unit} so far"
    if line.top is not None:
        head += (
            f", {humanize_quantity(line.top.units)} of them "
            f"{_of_them(line.top.dimension, line.top.value)}"
        )
    inline, charges = _charges(line)
    # "9.4M of them to /v1/search at $0.0004 each" would price only those; say "all".
    clauses = [head, f"all{inline}"] if inline and line.top is not None else [head + inline]
    usage = line.usage_to_date
    allowance = usage.spec.included_units
    if allowance:
        if usage.units_billed:
            clauses.append(f"the first {humanize_quantity(allowance)} are included")
        else:
            clauses.append(f"all within the {humanize_quantity(allowance)} included")
    clauses.extend(charges)
    return (
        "; ".join(clauses) + f": {format_money(line.amount_to_date_minor, line.currency)} so far."
    )


def _forecast(line: ProjectedLine, context: ExplainContext) -> str:
    amount = format_money(line.projected_amount_minor, line.currency)
    by = short_date(context.last_day)
    if line.forecast_method == WEEKDAY_MEAN:
        text = f"At the current pace about {humanize_quantity(line.forecast_units)} by {by}"
        now_tiers, end_tiers = line.tiers_to_date, line.tiers_projected
        if (
            line.usage_projected.spec.model is PriceModel.GRADUATED
            and end_tiers
            and (not now_tiers or end_tiers[-1].index > now_tiers[-1].index)
        ):
            text += f", into the {format_amount(end_tiers[-1].unit_price, line.currency)} tier"
        elif line.usage_projected.spec.model is PriceModel.VOLUME and end_tiers:
            if not now_tiers or end_tiers[-1].index != now_tiers[-1].index:
                rate = format_amount(end_tiers[-1].unit_price, line.currency)
                text += f", which puts all billed {line.unit} at {rate} each"
        return f"{text}, about {amount}."
    if line.forecast_method == DISTINCT_SO_FAR:
        return (
            f"New distinct {line.unit} cannot be forecast reliably, so the projection counts "
            f"only the {humanize_quantity(line.units_to_date)} seen so far: at least {amount} "
            f"by {by}."
        )
    basis = "highest" if line.aggregation == A.MAX else "latest"
    return (
        f"It is billed on the period's {basis} value, so the forecast stays at "
        f"{humanize_quantity(line.forecast_units)}: about {amount} by {by}."
    )


def _minimum_commitment(line: ProjectedLine, context: ExplainContext) -> str:
    cur = line.currency
    minimum = format_money(context.minimum_commitment_minor, cur)
    now = format_money(context.to_date_subtotal_minor, cur)
    end = format_money(context.projected_subtotal_minor, cur)
    by = short_date(context.last_day)
    head = f"The plan commits to at least {minimum} per period"
    if line.projected_amount_minor:
        true_up = format_money(line.projected_amount_minor, cur)
        return (
            f"{head}; charges so far come to {now} and at the current pace reach {end} by {by}, "
            f"so about {true_up} is added to make up the minimum."
        )
    if line.amount_to_date_minor:
        return (
            f"{head}; charges so far come to {now}, and at the current pace they pass the "
            f"minimum by {by} ({end}), so no true-up is expected."
        )
    return f"{head}; charges so far ({now}) already exceed it, so no true-up."


def explain_line(line: ProjectedLine, *, context: ExplainContext) -> str:
    """The explanation of one projected line."""
    if line.kind is LineKind.PLAN_FEE:
        fee = format_money(line.projected_amount_minor, line.currency)
        return f"The {context.plan_name} plan's fixed fee: {fee} per period."
    if line.kind is LineKind.MINIMUM_COMMITMENT:
        return _minimum_commitment(line, context)
    if line.kind is LineKind.CREDIT:
        credit = format_money(-line.projected_amount_minor, line.currency)
        return line.explanation or f"A credit of {credit} on this period lowers the total."
    return f"{_so_far(line)} {_forecast(line, context)}"


def explain_summary(invoice: ProjectedInvoice) -> str:
    """One paragraph for the whole invoice: so far, expected, against the previous period."""
    cur = invoice.currency
    first, last = invoice.period_start, invoice.last_day
    text = (
        f"{format_money(invoice.to_date_total_minor, cur)} so far in the period "
        f"{short_date(first)} – {short_date(last)}; about "
        f"{format_money(invoice.projected_total_minor, cur)} expected by {short_date(last)}"
    )
    previous = invoice.previous
    if previous is None:
        return f"{text}. There is no previous period to compare with."
    base = format_money(previous.total_minor, cur)
    what = "invoiced" if previous.source == "invoiced" else "so far, not invoiced yet"
    if not invoice.change_minor:
        return f"{text}, the same as the previous period ({base}, {what})."
    direction = "up" if invoice.change_minor > 0 else "down"
    change = format_money(abs(invoice.change_minor), cur)
    percent = ""
    if invoice.change_percent is not None:
        percent = f" ({'+' if invoice.change_percent > 0 else ''}"
        percent += f"{invoice.change_percent}%)"
    return f"{text}, {direction} {change}{percent} on the previous period's {base} ({what})."
