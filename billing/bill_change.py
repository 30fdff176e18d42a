"""Why the bill changed: the projected invoice against the previous period, line by line, with
the dimension values behind each line's change (billing.explain.bill_change_sentence words it).

Reads: the previous period and its plan's prices (priced again from its usage, or from the
closed invoice's quantities), and metering's daily rollups per dimension value for both
periods; a fixed number of queries whatever the number of meters.
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import ROUND_HALF_UP, Decimal

from billing.explain import BillChange, DimensionShift, LineChange, bill_change_sentence
from billing.models import Plan, Price
from billing.pricing import LineAmount, LineKind, PriceModel, price_invoice
from billing.projection import ProjectedInvoice
from metering.models import Account
from metering.rollup_selectors import usage_by_dimension_values

ONE_DAY = dt.timedelta(days=1)
_SCALE = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


def _rate(usage: LineAmount | None) -> Decimal | None:
    if usage is None or usage.spec.model not in (PriceModel.GRADUATED, PriceModel.VOLUME):
        return None
    return usage.tiers[-1].unit_price if usage.tiers else None


def _scaled(values: dict[tuple[str, str], Decimal], factor: Decimal) -> dict:
    with decimal.localcontext(_SCALE):
        return {key: value * factor for key, value in values.items()}


def bill_change_build(*, account: Account, invoice: ProjectedInvoice) -> BillChange:
    """The projected invoice (at period end) against the previous period's."""
    previous = invoice.previous
    current_usage = {line.meter_code: line for line in invoice.usage_lines}
    # The plans' prices (current and previous, usually the same plan) in one query.
    plan_ids = {pid for pid in (invoice.plan_id, previous.plan_id if previous else None) if pid}
    prices_by_plan: dict[int, list] = {pid: [] for pid in plan_ids}
    for price in (
        Price.objects.filter(plan_id__in=plan_ids)
        .select_related("meter", "plan")
        .order_by("meter__code")
    ):
        prices_by_plan[price.plan_id].append((price, price.to_spec()))
    meters = {price.meter.code: price.meter for price, _ in prices_by_plan[invoice.plan_id]}

    previous_lines: dict[tuple[str, str], tuple[int, LineAmount | None, str]] = {}
    previous_dims: dict[int, dict] = {}
    if previous is not None and previous.plan_id in prices_by_plan:
        prices = prices_by_plan[previous.plan_id]
        plan = prices[0][0].plan if prices else Plan.objects.get(pk=previous.plan_id)
        for price, _ in prices:
            meters.setdefault(price.meter.code, price.meter)
        quantities = previous.quantities or {}
        priced = price_invoice(
            lines=[(spec, quantities.get(price.meter.code, Decimal(0))) for price, spec in prices],
            currency=invoice.currency,
            flat_fee_minor=plan.flat_fee_minor,
            minimum_commitment_minor=plan.minimum_commitment_minor,
        )
        for line in priced.lines:
            code = line.usage.spec.meter_code if line.usage else ""
            previous_lines[(str(line.kind), code)] = (line.amount_minor, line.usage, line.title)
        previous_dims = usage_by_dimension_values(
            account=account,
            meters=list(meters.values()),
            first=previous.start_date,
            end=previous.end_date,
        )
    current_dims = usage_by_dimension_values(
        account=account,
        meters=[meters[code] for code in current_usage if code in meters],
        first=invoice.period_start,
        end=min(invoice.on + ONE_DAY, invoice.period_end),
    )

    lines: list[LineChange] = []
    seen: set[tuple[str, str]] = set()
    for line in invoice.lines:
        key = (str(line.kind), line.meter_code)
        seen.add(key)
        before_minor, before_usage, _title = previous_lines.get(key, (0, None, ""))
        if line.kind is not LineKind.USAGE:
            lines.append(
                LineChange(
                    kind=str(line.kind),
                    title=line.title,
                    previous_minor=before_minor,
                    current_minor=line.projected_amount_minor,
                )
            )
            continue
        meter = meters.get(line.meter_code)
        shifts: tuple[DimensionShift, ...] = ()
        if meter is not None:
            now = current_dims.get(meter.pk, {})
            # Usage per value so far, scaled to the forecast: the same basis as the line's units.
            if line.units_to_date and line.forecast_units is not None:
                with decimal.localcontext(_SCALE):
                    now = _scaled(now, line.forecast_units / line.units_to_date)
            before = previous_dims.get(meter.pk, {})
            shifts = tuple(
                DimensionShift(
                    dimension=dimension,
                    value=value,
                    previous=before.get((dimension, value), Decimal(0)),
                    current=now.get((dimension, value), Decimal(0)),
                )
                for dimension, value in sorted(set(now) | set(before))
            )
        usage = line.usage_projected
        lines.append(
            LineChange(
                kind=str(line.kind),
                title=line.title,
                previous_minor=before_minor,
                current_minor=line.projected_amount_minor,
                unit=line.unit,
                previous_units=None if before_usage is None else before_usage.quantity,
                current_units=line.forecast_units or Decimal(0),
                model=str(line.spec.model) if line.spec else "",
                previous_packages=before_usage.packages if before_usage else None,
                current_packages=usage.packages if usage else None,
                previous_rate=_rate(before_usage),
                current_rate=_rate(usage),
                shifts=shifts,
                meter_code=line.meter_code,
            )
        )
    # Lines only the previous bill had (a meter since dropped from the plan, a true-up).
    for (kind, code), (before_minor, before_usage, title) in previous_lines.items():
        if (kind, code) in seen or not before_minor:
            continue
        lines.append(
            LineChange(
                kind=kind,
                title=title,
                previous_minor=before_minor,
                current_minor=0,
                unit=before_usage.spec.unit_label if before_usage else "",
                previous_units=before_usage.quantity if before_usage else None,
                current_units=Decimal(0),
            )
        )
    return BillChange(
        currency=invoice.currency,
        current_total_minor=invoice.projected_total_minor,
        previous_total_minor=None if invoice.previous is None else invoice.previous.total_minor,
        lines=tuple(lines),
        minimum_commitment_minor=invoice.minimum_commitment_minor,
    )


def bill_change_text(*, account: Account, invoice: ProjectedInvoice) -> str:
    return bill_change_sentence(bill_change_build(account=account, invoice=invoice))
