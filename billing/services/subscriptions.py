"""Subscriptions: an account on a plan over a span of local dates."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import BillingPeriod, Plan, Subscription
from billing.periods import bounds_for_dates, local_date, local_midnight_utc, periods_between
from billing.services.periods import billing_period_ensure
from metering.models import Account


def subscription_check_new(
    *, account: Account, plan: Plan, started_at: dt.date, billing_anchor_day: int | None = None
) -> int:
    """Raise ValidationError if the account cannot start on the plan then; return the anchor.

    subscription_create runs it under a lock on the account; forms may run it to report early.
    """
    if isinstance(started_at, dt.datetime) or not isinstance(started_at, dt.date):
        raise ValidationError({"started_at": "Give the first day as a date (account's zone)."})
    anchor = started_at.day if billing_anchor_day is None else billing_anchor_day
    if isinstance(anchor, bool) or not isinstance(anchor, int) or not 1 <= anchor <= 31:
        raise ValidationError({"billing_anchor_day": "The anchor day must be 1..31."})
    if not plan.active:
        raise ValidationError({"plan": f"Plan {plan.code} is not active."})
    if plan.currency != account.currency:
        raise ValidationError(
            {
                "plan": f"Plan {plan.code} bills in {plan.currency}; the account uses "
                f"{account.currency}."
            }
        )
    overlapping = (
        account.subscriptions.filter(Q(ended_at__isnull=True) | Q(ended_at__gt=started_at))
        .select_related("plan")
        .first()
    )
    if overlapping is not None:
        raise ValidationError(
            {
                "started_at": f"The account is already subscribed from {overlapping.started_at} "
                f"({overlapping.plan.code}); end that subscription first."
            }
        )
    return anchor


@transaction.atomic
def subscription_create(
    *,
    account: Account,
    plan: Plan,
    started_at: dt.date,
    billing_anchor_day: int | None = None,
    provider_subscription_id: str = "",
    actor=None,
    now: dt.datetime | None = None,
) -> Subscription:
    """Put an account on a plan from the local date `started_at`, and open its periods.

    The anchor day defaults to the start's day of month. The status is `pending` when the start
    is after today in the account's zone, else `active`. An account has at most one
    subscription covering any day: end the current one first (subscription_cancel). Periods are
    opened from the start through the one containing `now` (just the first if it starts later).
    """
    now = now or timezone.now()
    # Serialise subscription changes per account, so two creates cannot both pass the checks.
    account = Account.objects.select_for_update(of=("self",)).get(pk=account.pk)
    anchor = subscription_check_new(
        account=account, plan=plan, started_at=started_at, billing_anchor_day=billing_anchor_day
    )
    today = local_date(now, account.timezone)
    subscription = Subscription(
        account=account,
        plan=plan,
        started_at=started_at,
        billing_anchor_day=anchor,
        status=Subscription.Status.PENDING if started_at > today else Subscription.Status.ACTIVE,
        provider_subscription_id=provider_subscription_id,
    )
    subscription.full_clean()
    subscription._history_user = actor
    subscription.save()

    start_instant = local_midnight_utc(started_at, account.timezone)
    for bounds in periods_between(
        anchor_day=anchor,
        tz=account.timezone,
        start=start_instant,
        end=max(now, start_instant) + dt.timedelta(microseconds=1),
    ):
        billing_period_ensure(
            subscription=subscription, at=max(bounds.starts_at, start_instant), actor=actor
        )
    return subscription


@transaction.atomic
def subscription_cancel(
    *, subscription: Subscription, ended_at: dt.date, actor=None
) -> Subscription:
    """End a subscription on the local date `ended_at` (exclusive: the first day not covered).

    The period containing the last day is cut short to end with it; open periods after it are
    removed. A closed or closing period past `ended_at` cannot be undone: that is refused.
    """
    subscription = (
        Subscription.objects.select_for_update(of=("self",))
        .select_related("account")
        .get(pk=subscription.pk)
    )
    if isinstance(ended_at, dt.datetime) or not isinstance(ended_at, dt.date):
        raise ValidationError({"ended_at": "Give the end as a date (account's zone)."})
    if ended_at <= subscription.started_at:
        raise ValidationError({"ended_at": "The end must be after the start."})
    periods = subscription.periods.filter(end_date__gt=ended_at).select_for_update(of=("self",))
    if any(p.state != BillingPeriod.State.OPEN for p in periods):
        raise ValidationError(
            {"ended_at": "A period after this date is already being invoiced or invoiced."}
        )
    for period in periods:
        period._history_user = actor
        if period.start_date >= ended_at:
            period.delete()
            continue
        bounds = bounds_for_dates(
            start_date=period.start_date, end_date=ended_at, tz=period.timezone
        )
        period.end_date, period.ends_at = bounds.end_date, bounds.ends_at
        period.save(update_fields=["end_date", "ends_at", "updated_at"])
    subscription.ended_at = ended_at
    subscription.status = Subscription.Status.CANCELED
    subscription._history_user = actor
    subscription.save(update_fields=["ended_at", "status", "updated_at"])
    return subscription


def subscription_activate_due(*, now: dt.datetime | None = None, actor=None) -> int:
    """Turn pending subscriptions whose first day has come (in their account's zone) active,
    and open their current period. Returns how many changed; safe to run any number of times."""
    now = now or timezone.now()
    changed = 0
    pending = Subscription.objects.filter(
        status=Subscription.Status.PENDING, started_at__lte=now.date() + dt.timedelta(days=1)
    ).select_related("account")
    for candidate in pending:
        with transaction.atomic():
            subscription = (
                Subscription.objects.select_for_update(of=("self",))
                .select_related("account")
                .get(pk=candidate.pk)
            )
            if subscription.status != Subscription.Status.PENDING:
                continue
            if subscription.started_at > local_date(now, subscription.account.timezone):
                continue
            subscription.status = Subscription.Status.ACTIVE
            subscription._history_user = actor
            subscription.save(update_fields=["status", "updated_at"])
            if (
                subscription.ended_at is None
                or local_date(now, subscription.account.timezone) < subscription.ended_at
            ):
                billing_period_ensure(subscription=subscription, at=now, actor=actor)
            changed += 1
    return changed
