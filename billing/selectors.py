"""Billing reads: current subscription, periods, a plan's prices as engine specs, a period's
usage."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Q, QuerySet
from django.utils import timezone

from billing.models import BillingPeriod, Plan, Price, Subscription
from billing.periods import local_date
from billing.pricing import PriceSpec
from metering.models import Account
from metering.rollup_selectors import usage_totals_between


def subscription_current(*, account: Account, at: dt.datetime | None = None) -> Subscription | None:
    """The subscription covering the instant `at` (default now) in the account's zone, if any.

    Judged by dates, not status: a canceled subscription still covers the days before its end,
    and a pending one covers its days once they come.
    """
    on = local_date(at or timezone.now(), account.timezone)
    return (
        Subscription.objects.filter(account=account, started_at__lte=on)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=on))
        .select_related("plan", "account")
        .order_by("-started_at")
        .first()
    )


def period_containing(*, account: Account, at: dt.datetime) -> BillingPeriod | None:
    """The account's period whose [starts_at, ends_at) contains `at`, whatever its state.

    Use it to tell late usage apart: an event whose period is closing or closed belongs to an
    invoice already being issued and must be shown as such, not added to it.
    """
    return (
        BillingPeriod.objects.for_account(account)
        .containing(at)
        .select_related("subscription__plan")
        .order_by("-starts_at")
        .first()
    )


def period_open(*, account: Account, at: dt.datetime | None = None) -> BillingPeriod | None:
    """The account's open period containing `at` (default now); None if none is open there."""
    period = period_containing(account=account, at=at or timezone.now())
    if period is None or period.state != BillingPeriod.State.OPEN:
        return None
    return period


def period_previous(*, period: BillingPeriod) -> BillingPeriod | None:
    """The account's period that ended last before this one began (across plan changes)."""
    return (
        BillingPeriod.objects.for_account(period.account_id)
        .filter(ends_at__lte=period.starts_at)
        .select_related("subscription__plan")
        .order_by("-starts_at")
        .first()
    )


def periods_for_account(*, account: Account) -> QuerySet[BillingPeriod]:
    """The account's periods, newest first."""
    return (
        BillingPeriod.objects.for_account(account)
        .select_related("subscription__plan")
        .order_by("-starts_at")
    )


def plan_prices(*, plan: Plan) -> list[tuple[Price, PriceSpec]]:
    """The plan's prices with their engine specs, ordered by meter code (one query)."""
    prices = Price.objects.filter(plan=plan).select_related("meter", "plan").order_by("meter__code")
    return [(price, price.to_spec()) for price in prices]


def period_usage(*, period: BillingPeriod) -> dict[str, Decimal]:
    """Usage of each meter priced on the period's plan over the period's instants
    `[starts_at, ends_at)`, exact, by meter code (0 where nothing was used). Read from metering's
    rollups (metering.rollup_selectors.usage_totals_between): whole local days from the daily
    rollups, and, for a period cut in a zone the account has since left (its bounds are no
    longer local midnights), its partial first and last days from the events themselves.
    """
    meters = [price.meter for price in period.subscription.plan.prices.select_related("meter")]
    if not meters:
        return {}
    totals = usage_totals_between(
        account=period.account, meters=meters, start=period.starts_at, end=period.ends_at
    )
    return {meter.code: totals[meter.pk] or Decimal(0) for meter in meters}


@dataclass(frozen=True)
class LateUsage:
    """Usage that reached a closed period after it was invoiced: shown, never billed there."""

    meter_code: str
    invoiced: Decimal
    now: Decimal

    @property
    def difference(self) -> Decimal:
        return self.now - self.invoiced


def period_late_usage(*, period: BillingPeriod) -> list[LateUsage]:
    """For a closed period, each meter whose usage today differs from what was invoiced (late or
    corrected events that arrived after the close). Empty for periods that are not closed."""
    if period.state != BillingPeriod.State.CLOSED or not period.invoice_lines:
        return []
    invoiced = {
        line["meter"]: Decimal(line["quantity"])
        for line in period.invoice_lines
        if line.get("meter") and line.get("quantity") is not None
    }
    current = period_usage(period=period)
    return [
        LateUsage(meter_code=code, invoiced=invoiced.get(code, Decimal(0)), now=value)
        for code, value in sorted(current.items())
        if value != invoiced.get(code, Decimal(0))
    ]
