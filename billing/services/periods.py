"""Billing periods: open them on time, close them once.

Closing is two committed steps so that the rest of the system can see it happen:
open -> closing (usage for the period is frozen from here; anything arriving later is late for
a closing or closed period and must never be added to its invoice) -> closed (priced, total
stored). A crash between the steps leaves the period `closing`, and calling
`billing_period_close` again finishes it; calling it on a closed period changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import BillingPeriod, Subscription
from billing.periods import bounds_for_dates, local_date, period_dates_for
from billing.pricing import InvoiceAmount, decimal_text, price_invoice
from billing.selectors import period_usage


class PeriodOutsideSubscription(ValueError):
    """The instant asked for is before the subscription starts or after it ends."""


class PeriodNotEnded(ValueError):
    """A period cannot be closed before its end instant has passed."""


class PeriodStateError(ValueError):
    """The period is not in a state that allows the transition."""


def _dates_for(subscription: Subscription, on: dt.date) -> tuple[dt.date, dt.date]:
    start, end = period_dates_for(anchor_day=subscription.billing_anchor_day, on=on)
    # The first and last periods are cut to the subscription's own span.
    start = max(start, subscription.started_at)
    if subscription.ended_at is not None:
        end = min(end, subscription.ended_at)
    return start, end


@transaction.atomic
def billing_period_ensure(
    *, subscription: Subscription, at: dt.datetime | None = None, actor=None
) -> BillingPeriod:
    """The subscription's period containing the instant `at` (default now), created open if it
    does not exist yet. Safe to call any number of times, also concurrently."""
    at = at or timezone.now()
    # One ensure at a time per subscription: the lock makes "look, then create" race-free.
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("account", "plan")
        .get(pk=subscription.pk)
    )
    tz = subscription.account.timezone
    on = local_date(at, tz)
    if on < subscription.started_at or (
        subscription.ended_at is not None and on >= subscription.ended_at
    ):
        raise PeriodOutsideSubscription(
            f"{on} ({tz}) is outside the subscription ({subscription.started_at} to "
            f"{subscription.ended_at or 'open end'})."
        )
    existing = subscription.periods.filter(start_date__lte=on, end_date__gt=on).first()
    if existing is not None:
        return existing

    start, end = _dates_for(subscription, on)
    # Periods cut earlier under another anchor or end date keep their days; this one fills the
    # gap around `on` without overlapping them.
    for other in subscription.periods.filter(start_date__lt=end, end_date__gt=start):
        if other.end_date <= on:
            start = max(start, other.end_date)
        else:
            end = min(end, other.start_date)
    bounds = bounds_for_dates(start_date=start, end_date=end, tz=tz)
    period = BillingPeriod(
        subscription=subscription,
        account=subscription.account,
        start_date=bounds.start_date,
        end_date=bounds.end_date,
        timezone=tz,
        starts_at=bounds.starts_at,
        ends_at=bounds.ends_at,
        state=BillingPeriod.State.OPEN,
        currency=subscription.plan.currency,
    )
    period._history_user = actor
    period.save()
    return period


@transaction.atomic
def billing_period_begin_close(
    *, period: BillingPeriod, actor=None, now: dt.datetime | None = None
) -> BillingPeriod:
    """open -> closing, once the period has ended. A closing or closed period is returned as is."""
    now = now or timezone.now()
    period = BillingPeriod.objects.select_for_update(of=("self",)).get(pk=period.pk)
    if period.state != BillingPeriod.State.OPEN:
        return period
    if period.ends_at > now:
        raise PeriodNotEnded(f"The period runs until {period.ends_at.isoformat()}; close it after.")
    period.state = BillingPeriod.State.CLOSING
    period._history_user = actor
    period.save(update_fields=["state", "updated_at"])
    return period


def _invoice_lines_json(invoice: InvoiceAmount) -> list[dict]:
    return [
        {
            "kind": str(line.kind),
            "title": line.title,
            "meter": line.usage.spec.meter_code if line.usage else None,
            "quantity": decimal_text(line.usage.quantity) if line.usage else None,
            "units_billed": decimal_text(line.usage.units_billed) if line.usage else None,
            "exact_amount": decimal_text(line.usage.amount) if line.usage else None,
            "amount_minor": line.amount_minor,
            "description": list(line.description),
        }
        for line in invoice.lines
    ]


@transaction.atomic
def billing_period_finish_close(
    *, period: BillingPeriod, quantities: Mapping[str, Decimal] | None = None, actor=None
) -> BillingPeriod:
    """closing -> closed: price the period's usage and store the total. Idempotent once closed.

    `quantities` maps meter code to the period's aggregated usage (exact Decimal); by default it
    is read from metering's daily rollups (billing.selectors.period_usage). A priced meter that
    is missing counts as zero usage.
    """
    period = (
        BillingPeriod.objects.select_for_update(of=("self",))
        .select_related("subscription__plan")
        .get(pk=period.pk)
    )
    if period.state == BillingPeriod.State.CLOSED:
        return period
    if period.state != BillingPeriod.State.CLOSING:
        raise PeriodStateError(f"Only a closing period can be closed; this one is {period.state}.")
    if quantities is None:
        quantities = period_usage(period=period)
    plan = period.subscription.plan
    prices = plan.prices.select_related("meter", "plan").order_by("meter__code")
    invoice = price_invoice(
        lines=[(price.to_spec(), quantities.get(price.meter.code, Decimal(0))) for price in prices],
        currency=period.currency,
        flat_fee_minor=plan.flat_fee_minor,
        minimum_commitment_minor=plan.minimum_commitment_minor,
    )
    period.state = BillingPeriod.State.CLOSED
    period.closed_at = timezone.now()
    period.total_minor = invoice.total_minor
    period.invoice_lines = _invoice_lines_json(invoice)
    period._history_user = actor
    period.save()
    return period


def billing_period_close(
    *,
    period: BillingPeriod,
    quantities: Mapping[str, Decimal] | None = None,
    actor=None,
    now: dt.datetime | None = None,
) -> BillingPeriod:
    """open -> closing -> closed, each step committed (see the module docstring)."""
    period = billing_period_begin_close(period=period, actor=actor, now=now)
    return billing_period_finish_close(period=period, quantities=quantities, actor=actor)
