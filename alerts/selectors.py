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
from billing.providers.base import PUSH_WINDOW
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


@dataclass(frozen=True)
class HoldWindow:
    """How close the held usage is to the provider's 35-day window."""

    oldest: dt.datetime | None
    age_days: int | None
    warn_after_days: int
    days_left: int | None  # whole days before the oldest held usage can no longer be pushed
    deadline: dt.datetime | None  # when the oldest held usage leaves the provider's window
    warning: bool


def hold_window(hold: BillingHold, *, at: dt.datetime | None = None) -> HoldWindow:
    at = at or timezone.now()
    oldest = held_usage_oldest_by_account([hold.account_id]).get(hold.account_id)
    warn_after = settings.BILLING_HOLD_WARN_DAYS
    if oldest is None:
        return HoldWindow(None, None, warn_after, None, None, False)
    age = at - oldest
    left = PUSH_WINDOW - age
    return HoldWindow(
        oldest=oldest,
        age_days=age.days,
        warn_after_days=warn_after,
        days_left=max(0, left.days),
        deadline=oldest + PUSH_WINDOW,
        warning=age >= dt.timedelta(days=warn_after),
    )


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
