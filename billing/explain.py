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
from metering.models import ROLLUP_OTHER, Meter

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


# --- why the bill changed: one sentence for the top of the account page ------------------------
#
#   "Up $0.91 (+13%) on last period: compute time rose from 3,092 to 4,574 seconds (+$0.90, now
#   2 packages instead of 1), mostly `instance_type=large`."
#
# Pure: billing.bill_change assembles a BillChange from the projection, the previous period's
# lines and metering's usage per dimension value; this part only words it.

MAX_CHANGE_LINES = 3
# A dimension value is "mostly" the driver when it carries at least this share of the change.
MOSTLY_SHARE = Decimal("0.5")


@dataclass(frozen=True)
class DimensionShift:
    """One dimension value's usage in the previous period and in this one."""

    dimension: str
    value: str
    previous: Decimal
    current: Decimal

    @property
    def change(self) -> Decimal:
        return self.current - self.previous


@dataclass(frozen=True)
class LineChange:
    """One invoice line in the previous period and in this one (projected to its end).

    `kind` is a billing.pricing.LineKind value. For usage lines: units, the price model, the
    packages (package model) and the unit price of the highest tier reached (tiered models), and
    the shifts of the meter's dimension values, scaled to the same basis as `current_units`.
    `previous_units` is None when the line was not on the previous bill at all."""

    kind: str
    title: str
    previous_minor: int
    current_minor: int
    unit: str = ""
    previous_units: Decimal | None = None
    current_units: Decimal = Decimal(0)
    model: str = ""
    previous_packages: int | None = None
    current_packages: int | None = None
    previous_rate: Decimal | None = None
    current_rate: Decimal | None = None
    shifts: tuple[DimensionShift, ...] = ()
    meter_code: str = ""

    @property
    def change_minor(self) -> int:
        return self.current_minor - self.previous_minor


@dataclass(frozen=True)
class BillChange:
    currency: str
    current_total_minor: int
    previous_total_minor: int | None  # None: no previous period
    lines: tuple[LineChange, ...]
    minimum_commitment_minor: int = 0

    @property
    def change_minor(self) -> int | None:
        if self.previous_total_minor is None:
            return None
        return self.current_total_minor - self.previous_total_minor


def percent_text(current_minor: int, base_minor: int) -> str:
    """'+13%', '-4.5%', '+2,402%': whole percent from 10% on, one decimal below (half up)."""
    with decimal.localcontext(_WIDE):
        percent = Decimal(current_minor - base_minor) * 100 / Decimal(base_minor)
    places = Decimal(1) if abs(percent) >= 10 else Decimal("0.1")
    rounded = percent.quantize(places, rounding=ROUND_HALF_UP)
    text = f"{abs(rounded):,f}".removesuffix(".0")
    sign = "+" if rounded > 0 else "-" if rounded < 0 else ""
    return f"{sign}{text}%"


def signed_money(minor: int, currency: str) -> str:
    """'+$0.90', '-¥1,200', '+KWD 1.235'."""
    return ("+" if minor >= 0 else "-") + format_money(abs(minor), currency)


def sentence_quantity(value: Decimal) -> str:
    """Whole units from 100 on (3,092.4 -> '3,092'), shortened past 10,000 (12.4M)."""
    if abs(value) >= 100:
        with decimal.localcontext(_WIDE):
            value = value.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return humanize_quantity(value)


def _mid_sentence(title: str) -> str:
    """'Compute time' -> 'compute time'; 'API calls' and 'LLM tokens' stay as they are."""
    if len(title) > 1 and title[0].isupper() and not title[1].isupper():
        return title[0].lower() + title[1:]
    return title


def _drivers(line: LineChange, direction: int) -> str:
    return _top_shifts(line, direction)[0]


def _top_shifts(line: LineChange, direction: int) -> tuple[str, DimensionShift | None]:
    """', mostly `instance_type=large`' (or two values), or '' when nothing stands out.

    Only shifts in the line's direction count; a dimension with a single value in both periods
    says nothing (every event has it), and "(none)"/"other" name nothing a customer knows."""
    by_dimension: dict[str, int] = {}
    for shift in line.shifts:
        by_dimension[shift.dimension] = by_dimension.get(shift.dimension, 0) + 1
    moving = [
        s
        for s in line.shifts
        if by_dimension[s.dimension] > 1
        and s.value not in ("", ROLLUP_OTHER)
        and s.change * direction > 0
    ]
    if not moving:
        return "", None
    total = abs((line.current_units or Decimal(0)) - (line.previous_units or Decimal(0)))
    moving.sort(key=lambda s: (-abs(s.change), s.dimension, s.value))
    top = moving[0]
    if not total or abs(top.change) >= total * MOSTLY_SHARE:
        return f", mostly `{top.dimension}={top.value}`", top
    pair = [s for s in moving[1:] if s.dimension == top.dimension][:1]
    if pair and abs(top.change) + abs(pair[0].change) >= total * MOSTLY_SHARE:
        second = f"`{pair[0].dimension}={pair[0].value}`"
        return f", mostly `{top.dimension}={top.value}` and {second}", top
    return f", led by `{top.dimension}={top.value}`", top


def _pricing_detail(line: LineChange, currency: str) -> str:
    """', now 2 packages instead of 1' / ', now reaching the $0.0002 tier' / ''."""
    if line.model == PriceModel.PACKAGE and line.previous_packages != line.current_packages:
        if line.previous_packages is None or line.current_packages is None:
            return ""
        plural = "s" if line.current_packages != 1 else ""
        return f", now {line.current_packages} package{plural} instead of {line.previous_packages}"
    if line.previous_rate is None or line.current_rate is None:
        return ""
    if line.previous_rate == line.current_rate:
        return ""
    now = format_amount(line.current_rate, currency)
    before = format_amount(line.previous_rate, currency)
    if line.model == PriceModel.VOLUME:
        return f", now all at {now} each instead of {before}"
    if line.model == PriceModel.GRADUATED:
        return f", now reaching the {now} tier instead of the {before} one"
    return ""


def _line_clause(line: LineChange, currency: str, direction: int) -> str:
    money = signed_money(line.change_minor, currency)
    title = _mid_sentence(line.title)
    if line.kind == LineKind.PLAN_FEE:
        verb = "rose" if line.change_minor > 0 else "fell"
        return (
            f"the plan's fixed fee {verb} from {format_money(line.previous_minor, currency)} "
            f"to {format_money(line.current_minor, currency)}"
        )
    if line.kind == LineKind.MINIMUM_COMMITMENT:
        if not line.previous_minor:
            return (
                f"a minimum-commitment true-up of {format_money(line.current_minor, currency)} "
                "tops usage up to the plan's minimum"
            )
        if not line.current_minor:
            return (
                f"no minimum-commitment true-up is needed any more "
                f"({format_money(line.previous_minor, currency)} last period)"
            )
        verb = "rose" if line.change_minor > 0 else "fell"
        return (
            f"the minimum-commitment true-up {verb} from "
            f"{format_money(line.previous_minor, currency)} to "
            f"{format_money(line.current_minor, currency)}"
        )
    unit = f" {line.unit}" if line.unit else ""
    current = line.current_units or Decimal(0)
    previous = line.previous_units
    detail = _pricing_detail(line, currency)
    drivers = _drivers(line, direction if direction else (1 if line.change_minor > 0 else -1))
    if not previous:
        return f"new this period, {title} at {sentence_quantity(current)}{unit} ({money}){drivers}"
    if not current:
        return (
            f"no {title} this period against {sentence_quantity(previous)}{unit} last period "
            f"({money})"
        )
    if current == previous:
        return f"{title} stayed at {sentence_quantity(current)}{unit} ({money}{detail})"
    verb = "rose" if current > previous else "fell"
    return (
        f"{title} {verb} from {sentence_quantity(previous)} to {sentence_quantity(current)}"
        f"{unit} ({money}{detail}){drivers}"
    )


def _changed_lines(change: BillChange, direction: int) -> list[LineChange]:
    lines = [line for line in change.lines if line.change_minor * direction > 0]
    lines.sort(key=lambda line: -abs(line.change_minor))
    return lines[:MAX_CHANGE_LINES]


def bill_change_sentence(change: BillChange) -> str:
    """Why the bill changed, in one sentence: the invoice-level change against the previous
    period and the one to three lines that drove it (see the examples in the tests)."""
    cur = change.currency
    total = format_money(change.current_total_minor, cur)
    if change.previous_total_minor is None:
        usage = [line for line in change.lines if line.current_minor > 0]
        usage.sort(key=lambda line: -line.current_minor)
        text = f"No previous period to compare with: {total} projected for this period"
        if usage and change.current_total_minor:
            biggest = usage[0]
            amount = format_money(biggest.current_minor, cur)
            if biggest.kind == LineKind.USAGE:
                units = f"{sentence_quantity(biggest.current_units)} {biggest.unit}".rstrip()
                text += f", the largest part {_mid_sentence(biggest.title)} ({units}, {amount})"
            else:
                text += f", the largest part {_mid_sentence(biggest.title)} ({amount})"
        return text + "."
    delta = change.change_minor
    base = change.previous_total_minor
    at_minimum = bool(change.minimum_commitment_minor) and (
        change.current_total_minor == change.minimum_commitment_minor
    )
    if delta == 0:
        text = f"Unchanged on last period at {total}"
        if at_minimum:
            text += ", the plan's minimum commitment"
        # Usage can still move underneath a minimum commitment: say which way, so a support
        # agent does not tell a customer nothing happened.
        moved = [line for line in change.lines if line.kind == LineKind.USAGE and line.change_minor]
        moved.sort(key=lambda line: -abs(line.change_minor))
        if not moved:
            return text + "."
        clauses = [
            _line_clause(line, cur, 1 if line.change_minor > 0 else -1)
            for line in moved[:MAX_CHANGE_LINES]
        ]
        tail = "; all within the minimum" if at_minimum else ""
        return f"{text}: " + "; ".join(clauses) + tail + "."
    direction = 1 if delta > 0 else -1
    head = "Up" if delta > 0 else "Down"
    percent = f" ({percent_text(change.current_total_minor, base)})" if base else ""
    text = f"{head} {format_money(abs(delta), cur)}{percent} on last period"
    if not base:
        text += f"'s {format_money(0, cur)}"
    lines = _changed_lines(change, direction)
    if not lines:
        return text + "."
    return f"{text}: " + "; ".join(_line_clause(line, cur, direction) for line in lines) + "."


def sentence_html(sentence: str) -> str:
    """The sentence for a page: HTML-escaped, `dimension=value` in <code>."""
    from django.utils.html import escape

    parts = escape(sentence).split("`")
    return "".join(
        f"<code>{part}</code>" if position % 2 else part for position, part in enumerate(parts)
    )


def bill_change_driver(change: BillChange) -> tuple[str, str] | None:
    """(meter code, dimension) of the first line the sentence names with a driver, so a page can
    open that breakdown first; None when the sentence names none."""
    delta = change.change_minor
    if not delta:
        return None
    direction = 1 if delta > 0 else -1
    for line in _changed_lines(change, direction):
        if line.kind != LineKind.USAGE or not line.meter_code:
            continue
        _text, top = _top_shifts(line, direction)
        if top is not None:
            return line.meter_code, top.dimension
    return None
