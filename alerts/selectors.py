"""Alerts' reads: the queue, billing holds, how a rule's alerts were labelled, and the series
an alert's chart draws."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from alerts.baseline import weekday_baseline
from alerts.models import Alert, AlertRule, BillingHold
from billing.models import PushLedgerEntry
from billing.providers import platform_rules
from metering import periods
from metering.account_holds import AccountHold, HoldSource
from metering.models import RolledUpEvent, UsageEvent
from metering.rollup_selectors import usage_series


def account_on_hold(account_id: int) -> bool:
    """True while the account's billing push is held (the push skips held accounts)."""
    return BillingHold.objects.filter(
        account_id=account_id, status=BillingHold.Status.ACTIVE
    ).exists()


def held_account_ids() -> set[int]:
    """Every account with an active hold, in one query (the push asks once per batch)."""
    return set(
        BillingHold.objects.filter(status=BillingHold.Status.ACTIVE).values_list(
            "account_id", flat=True
        )
    )


def active_hold(account_id: int) -> BillingHold | None:
    return (
        BillingHold.objects.filter(account_id=account_id, status=BillingHold.Status.ACTIVE)
        .select_related("alert")
        .first()
    )


def account_hold_info(account_id: int) -> AccountHold | None:
    """The account's active hold as the lower apps see it (metering.account_holds)."""
    hold = active_hold(account_id)
    if hold is None:
        return None
    return AccountHold(
        status=hold.status, since=hold.opened_at, reason=hold.reason, hold_id=hold.pk
    )


def held_usage_oldest_by_account(account_ids: list[int]) -> dict[int, dt.datetime]:
    """When the oldest usage kept back from the provider happened, by account: the oldest
    event still in the rolled-up feed, or pending in the push ledger (two queries)."""
    if not account_ids:
        return {}
    in_feed = (
        UsageEvent.objects.filter(
            account_id__in=account_ids,
            pk__in=RolledUpEvent.objects.filter(account_id__in=account_ids).values("event_id"),
        )
        .values("account_id")
        .annotate(oldest=Min("occurred_at"))
        .order_by()
    )
    pending = (
        PushLedgerEntry.objects.filter(
            account_id__in=account_ids, status=PushLedgerEntry.Status.PENDING
        )
        .values("account_id")
        .annotate(oldest=Min("timestamp"))
        .order_by()
    )
    oldest: dict[int, dt.datetime] = {}
    for row in [*in_feed, *pending]:
        seen = oldest.get(row["account_id"])
        if seen is None or row["oldest"] < seen:
            oldest[row["account_id"]] = row["oldest"]
    return oldest


def provider_window() -> dt.timedelta | None:
    """How old usage the configured billing platform still accepts (Stripe 35 days, Orb its
    grace period, Lago no limit: None)."""
    return platform_rules(settings.BILLING_PROVIDER).past_window


def window_text(window: dt.timedelta | None) -> str:
    """ "35-day", "12-hour": the window as the pages and e-mails name it."""
    if window is None:
        return "unlimited"
    if window % dt.timedelta(days=1):
        return f"{window // dt.timedelta(hours=1)}-hour"
    return f"{window.days}-day"


@dataclass(frozen=True)
class HoldWindow:
    """How close the held usage is to the provider's window for past usage."""

    oldest: dt.datetime | None
    age_days: int | None
    warn_after_days: int
    days_left: int | None  # whole days before the oldest held usage can no longer be pushed
    deadline: dt.datetime | None  # when the oldest held usage leaves the provider's window
    warning: bool
    window: str = "35-day"  # the provider's window, as text ("unlimited": no deadline)


def hold_window(hold: BillingHold, *, at: dt.datetime | None = None) -> HoldWindow:
    at = at or timezone.now()
    oldest = held_usage_oldest_by_account([hold.account_id]).get(hold.account_id)
    warn_after = settings.BILLING_HOLD_WARN_DAYS
    window = provider_window()
    if oldest is None:
        return HoldWindow(None, None, warn_after, None, None, False, window_text(window))
    age = at - oldest
    if window is None:  # the platform takes usage of any age: no deadline, nothing to warn of
        return HoldWindow(oldest, age.days, warn_after, None, None, False, window_text(window))
    left = window - age
    return HoldWindow(
        oldest=oldest,
        age_days=age.days,
        warn_after_days=warn_after,
        days_left=max(0, left.days),
        deadline=oldest + window,
        warning=age >= hold_warn_after(window),
        window=window_text(window),
    )


def hold_warn_after(window: dt.timedelta | None) -> dt.timedelta | None:
    """From what age held usage is worth a warning: BILLING_HOLD_WARN_DAYS of Stripe's 35-day
    window, the same share of a shorter one (Orb's grace period); None: never (no window)."""
    if window is None:
        return None
    days = dt.timedelta(days=settings.BILLING_HOLD_WARN_DAYS)
    return min(days, window * settings.BILLING_HOLD_WARN_DAYS / 35)


HOLD_SOURCE = HoldSource(held_account_ids=held_account_ids, account_hold=account_hold_info)


def alert_list(
    *, status: str | None = None, account: str | None = None, kind: str | None = None
) -> QuerySet[Alert]:
    alerts = Alert.objects.select_related("account", "meter").order_by("-id")
    if status:
        alerts = alerts.filter(status=status)
    if account:
        alerts = alerts.filter(account__external_id=account)
    if kind:
        alerts = alerts.filter(kind=kind)
    return alerts


def rule_label_counts(rule: AlertRule) -> dict[str, int]:
    """How the rule's alerts were labelled: label (or "unlabelled") -> alerts."""
    counts = {label: 0 for label in Alert.Label.values}
    counts["unlabelled"] = 0
    for row in rule.alerts.values("label").annotate(n=Count("id")).order_by():
        counts[row["label"] or "unlabelled"] = row["n"]
    return counts


@dataclass(frozen=True)
class AlertSeriesPoint:
    day: dt.date
    value: Decimal | None
    low: Decimal | None
    median: Decimal | None
    high: Decimal | None


def alert_series(alert: Alert, *, days: int = 42) -> list[AlertSeriesPoint]:
    """The meter's daily usage for the `days` up to the alert's day, each day with the
    weekday band the spike rule would have used for it."""
    if alert.meter_id is None:
        return []
    account, meter = alert.account, alert.meter
    end = alert.day + dt.timedelta(days=1)
    weeks = int(alert.rule.effective_params.get("weeks", 8))
    first = end - dt.timedelta(days=days + 7 * weeks)
    series = usage_series(account=account, meter=meter, start=first, end=end)
    daily = {p.day: p.value or Decimal(0) for p in series.points}
    first_usage = next((day for day, value in sorted(daily.items()) if value), None)
    points = []
    for day in periods.iter_days(end - dt.timedelta(days=days), end):
        base = weekday_baseline(
            daily,
            on=day,
            weeks=weeks,
            first_usage=first_usage,
            band_mads=Decimal(str(alert.rule.effective_params.get("band_mads", 3))),
            min_samples=3,
        )
        points.append(
            AlertSeriesPoint(
                day=day,
                value=daily.get(day),
                low=base.low if base else None,
                median=base.median if base else None,
                high=base.high if base else None,
            )
        )
    return points
