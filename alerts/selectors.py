"""Alerts' reads: the queue, billing holds, how a rule's alerts were labelled, and the series
an alert's chart draws."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, QuerySet

from alerts.baseline import weekday_baseline
from alerts.models import Alert, AlertRule, BillingHold
from metering import periods
from metering.rollup_selectors import usage_series


def account_on_hold(account_id: int) -> bool:
    """True while the account's billing push is held (the push skips held accounts)."""
    return BillingHold.objects.filter(
        account_id=account_id, status=BillingHold.Status.ACTIVE
    ).exists()


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
