"""Billing periods: open them on time, close them once.

Closing is two committed steps so that the rest of the system can see it happen:
open -> closing (usage for the period is frozen from here; anything arriving later is late for
a closing or closed period and must never be added to its invoice) -> closed (priced, total
stored). A crash between the steps leaves the period `closing`, and calling
`billing_period_close` again finishes it; calling it on a closed period changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.module_loading import import_string

from billing.models import BillingPeriod, Subscription
from billing.periods import bounds_for_dates, local_date, period_dates_for
from billing.pricing import InvoiceAmount, decimal_text, price_invoice
from billing.selectors import period_usage
from metering.rollup_selectors import usage_pending_before

logger = logging.getLogger(__name__)


class PeriodOutsideSubscription(ValueError):
    """The instant asked for is before the subscription starts or after it ends."""


class PeriodNotReady(ValueError):
    """The period cannot begin closing yet (see `period_close_check`)."""


class PeriodNotEnded(PeriodNotReady):
    """A period cannot be closed before its end instant has passed."""


class PeriodInGrace(PeriodNotReady):
    """The period ended less than BILLING_CLOSE_GRACE_MINUTES ago: late events still count."""


class PeriodUsagePending(PeriodNotReady):
    """Events of the account from before the period's end still wait to be rolled up."""


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
    does not exist yet. Safe to call any number of times, also concurrently.

    Periods are found by their UTC instants, so a time-zone change never moves one: the periods
    that exist keep their bounds (see `README`, "Billing periods"), and a new period is cut in
    the account's current zone but starts exactly where the period before it ends and ends
    exactly where the period after it starts, so no instant falls in two periods or in none.
    """
    at = at or timezone.now()
    # One ensure at a time per subscription: the lock makes "look, then create" race-free.
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("account", "plan")
        .get(pk=subscription.pk)
    )
    existing = subscription.periods.filter(starts_at__lte=at, ends_at__gt=at).first()
    if existing is not None:
        return existing
    tz = subscription.account.timezone
    before = subscription.periods.filter(ends_at__lte=at).order_by("-ends_at").first()
    after = subscription.periods.filter(starts_at__gt=at).order_by("starts_at").first()
    on = local_date(at, tz)
    # After a zone change the local date of `at` can still lie inside the period before (the
    # new zone is behind the old one) or already inside the one after (ahead): the instant
    # belongs to the period between them, whose days are the ones between them.
    if before is not None and on < before.end_date:
        on = before.end_date
    if after is not None and on >= after.start_date:
        on = after.start_date - dt.timedelta(days=1)
    _check_within_subscription(subscription, on, tz)
    start, end = _dates_for(subscription, on)
    # Periods cut earlier under another anchor or end date keep their days; this one fills the
    # gap around `on` without overlapping them.
    if before is not None:
        start = max(start, before.end_date)
    if after is not None:
        end = min(end, after.start_date)
    if end <= start:
        raise PeriodOutsideSubscription(
            f"No whole local day in {tz} is left between the periods around {at.isoformat()}."
        )
    bounds = bounds_for_dates(start_date=start, end_date=end, tz=tz)
    # Adjacent periods share their boundary instant, whatever zone each was cut in.
    starts_at = before.ends_at if before is not None and before.end_date == start else None
    ends_at = after.starts_at if after is not None and after.start_date == end else None
    period = BillingPeriod(
        subscription=subscription,
        account=subscription.account,
        start_date=bounds.start_date,
        end_date=bounds.end_date,
        timezone=tz,
        starts_at=starts_at or bounds.starts_at,
        ends_at=ends_at or bounds.ends_at,
        state=BillingPeriod.State.OPEN,
        currency=subscription.plan.currency,
    )
    period._history_user = actor
    period.save()
    return period


def _check_within_subscription(subscription: Subscription, on: dt.date, tz: str) -> None:
    if on < subscription.started_at or (
        subscription.ended_at is not None and on >= subscription.ended_at
    ):
        raise PeriodOutsideSubscription(
            f"{on} ({tz}) is outside the subscription ({subscription.started_at} to "
            f"{subscription.ended_at or 'open end'})."
        )


@transaction.atomic
def billing_period_begin_close(
    *, period: BillingPeriod, actor=None, now: dt.datetime | None = None
) -> BillingPeriod:
    """open -> closing, once `period_close_check` passes (else it raises). A closing or closed
    period is returned as is."""
    now = now or timezone.now()
    period = BillingPeriod.objects.select_for_update(of=("self",)).get(pk=period.pk)
    if period.state != BillingPeriod.State.OPEN:
        return period
    period_close_check(period=period, now=now)
    period.state = BillingPeriod.State.CLOSING
    period._history_user = actor
    period.save(update_fields=["state", "updated_at"])
    return period


def _check_usage_final(period: BillingPeriod) -> None:
    if usage_pending_before(account_id=period.account_id, before=period.ends_at):
        raise PeriodUsagePending(
            "Usage from before the period's end is still being rolled up; it would be left off "
            "the invoice. The hourly roll closes the period once it is in."
        )


def period_close_check(*, period: BillingPeriod, now: dt.datetime | None = None) -> None:
    """The one guard every way of closing goes through (the hourly roll, the admin action):
    the period has ended, BILLING_CLOSE_GRACE_MINUTES have passed since (events that arrive
    within the grace still count), and no event of the account from before its end still waits
    in the rollup inbox. Raises a PeriodNotReady subclass saying which."""
    now = now or timezone.now()
    if period.ends_at > now:
        raise PeriodNotEnded(f"The period runs until {period.ends_at.isoformat()}; close it after.")
    grace = dt.timedelta(minutes=settings.BILLING_CLOSE_GRACE_MINUTES)
    if period.ends_at + grace > now:
        raise PeriodInGrace(
            f"The period ended at {period.ends_at.isoformat()}; late usage still counts until "
            f"{(period.ends_at + grace).isoformat()} (BILLING_CLOSE_GRACE_MINUTES). "
            "The hourly roll closes it after that."
        )
    _check_usage_final(period)


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
        # A period marked closing before its usage was final (or by an older version) waits.
        _check_usage_final(period)
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


# --- the hourly roll: activate, close, open ----------------------------------------------------


@dataclass
class PeriodRoll:
    activated: int = 0
    closed: int = 0
    waiting_for_rollups: int = 0
    opened: int = 0
    held: int = 0


# --- the close hold: checks named in a setting, released by a Manager ----------------------------


class PeriodHoldError(ValueError):
    """The hold cannot be released (no reason given, or the period is not held)."""


def period_close_hold_reasons(*, period: BillingPeriod, now: dt.datetime) -> list[str]:
    """Run the checks named in BILLING_CLOSE_CHECKS (dotted paths to callables taking
    `period=` and `now=` and returning a list of sentences) and return every reason they give
    to hold the period. Billing names no higher app: the checks (reconciliation's, by default)
    come from the setting. A period whose hold a Manager released is not checked again."""
    if period.hold_released_at is not None:
        return []
    reasons: list[str] = []
    for path in settings.BILLING_CLOSE_CHECKS:
        try:
            reasons.extend(import_string(path)(period=period, now=now))
        except Exception as exc:  # a check that cannot run holds its period, not the roll
            logger.exception("Close check %s failed for period %s", path, period.pk)
            reasons.append(f"The close check {path} failed ({exc.__class__.__name__}: {exc}).")
    return reasons


def _unhold(period: BillingPeriod, *, actor) -> None:
    """The checks pass again (e.g. the mismatches were resolved): the hold is lifted."""
    with transaction.atomic():
        period = BillingPeriod.objects.select_for_update(of=("self",)).get(pk=period.pk)
        if not period.hold_reason:
            return
        period.hold_reason = ""
        period._history_user = actor
        period._change_reason = "Hold lifted: the close checks pass"
        period.save(update_fields=["hold_reason", "updated_at"])


def _hold(period: BillingPeriod, reasons: list[str], *, now: dt.datetime, actor) -> None:
    text = "\n".join(reasons)
    with transaction.atomic():
        period = BillingPeriod.objects.select_for_update(of=("self",)).get(pk=period.pk)
        if period.hold_reason == text and period.held_at is not None:
            return  # held for the same reasons: nothing new to record
        period.hold_reason = text
        period.held_at = period.held_at or now
        period._history_user = actor
        period._change_reason = ("Held before closing: " + "; ".join(reasons))[:100]
        period.save(update_fields=["hold_reason", "held_at", "updated_at"])


@transaction.atomic
def billing_period_hold_release(*, period: BillingPeriod, actor, reason: str) -> BillingPeriod:
    """A Manager lets a held period close although its checks still give reasons: the release
    is recorded with the user and the reason (in the period's history), and the next roll
    closes the period without running the checks again."""
    reason = (reason or "").strip()
    if not reason:
        raise PeriodHoldError("Give a reason for releasing the hold.")
    if actor is None or not actor.has_perm("billing.change_billingperiod"):
        raise PermissionDenied("Releasing a hold needs billing.change_billingperiod.")
    period = BillingPeriod.objects.select_for_update(of=("self",)).get(pk=period.pk)
    if not period.hold_reason or period.state == BillingPeriod.State.CLOSED:
        raise PeriodHoldError(f"{period} is not held.")
    period.hold_released_at = timezone.now()
    period.hold_released_by = actor
    period._history_user = actor
    period._change_reason = f"Hold released: {reason}"[:100]
    period.save(update_fields=["hold_released_at", "hold_released_by", "updated_at"])
    return period


def billing_periods_roll(*, now: dt.datetime | None = None, actor=None) -> PeriodRoll:
    """What the calendar asks for, run hourly: activate subscriptions whose first day has come;
    close every period that ended at least BILLING_CLOSE_GRACE_MINUTES ago (late events that
    arrive within the grace still count) and whose events up to its end are all rolled up,
    finishing any close left half done; open the current period of every active subscription
    that has none. Each step locks its row and is idempotent, so two runs at once, or a run
    repeated, change nothing twice."""
    from billing.services.subscriptions import subscription_activate_due

    now = now or timezone.now()
    grace = dt.timedelta(minutes=settings.BILLING_CLOSE_GRACE_MINUTES)
    roll = PeriodRoll(activated=subscription_activate_due(now=now, actor=actor))

    due = BillingPeriod.objects.filter(
        state__in=[BillingPeriod.State.OPEN, BillingPeriod.State.CLOSING],
        ends_at__lte=now - grace,
    ).order_by("ends_at", "pk")
    for period in due:
        # Open or already closing (by the admin, or a close interrupted): never finished while
        # usage from before its end still waits to be rolled up.
        try:
            if period.state == BillingPeriod.State.OPEN:
                period_close_check(period=period, now=now)
            else:
                _check_usage_final(period)
        except PeriodUsagePending:
            roll.waiting_for_rollups += 1
            continue
        # Then the close checks (reconciliation by default): while any gives reasons the
        # period is held as it is (ingestion, rollups and pushes never wait for it).
        reasons = period_close_hold_reasons(period=period, now=now)
        if reasons:
            _hold(period, reasons, now=now, actor=actor)
            roll.held += 1
            continue
        if period.hold_reason and period.hold_released_at is None:
            _unhold(period, actor=actor)
        try:
            closed = billing_period_close(period=period, actor=actor, now=now)
        except PeriodUsagePending:
            roll.waiting_for_rollups += 1
            continue
        roll.closed += closed.state == BillingPeriod.State.CLOSED

    current = BillingPeriod.objects.filter(
        subscription=OuterRef("pk"), starts_at__lte=now, ends_at__gt=now
    )
    uncovered = (
        Subscription.objects.filter(status=Subscription.Status.ACTIVE)
        .exclude(Exists(current))
        .select_related("account")
        .order_by("pk")
    )
    for subscription in uncovered:
        roll.opened += _open_through(subscription, now=now, actor=actor)
    return roll


def _open_through(subscription: Subscription, *, now: dt.datetime, actor) -> int:
    """Open every period from the end of the subscription's last one through the one holding
    `now`, so that no stretch of usage is left without a period, even after the roll has not
    run for longer than a period. Returns how many were opened."""
    last = subscription.periods.order_by("-ends_at").first()
    at = last.ends_at if last is not None and last.ends_at <= now else now
    opened = 0
    while at <= now:
        try:
            period = billing_period_ensure(subscription=subscription, at=at, actor=actor)
        except PeriodOutsideSubscription:
            break  # ended, or not started in its zone yet
        opened += 1
        at = period.ends_at
    return opened
