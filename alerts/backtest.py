"""Replaying the rules over the past: what they would have fired, day by day, writing and
notifying nothing."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from alerts.evaluation import Finding, RuleBook, findings_for_accounts
from alerts.models import AlertRule
from metering import periods
from metering.models import Account, Meter


@dataclass(frozen=True)
class BacktestDay:
    day: dt.date
    findings: list[Finding]


def alerts_backtest(
    *, since: dt.date, until: dt.date, rule_code: str | None = None, slice_size: int = 500
) -> Iterator[BacktestDay]:
    """For each local day in [since, until], the findings as of the end of that day in each
    account's zone (a complete day). With `rule_code`, only that rule, enabled or not,
    wherever it is the rule that applies."""
    if rule_code and not AlertRule.objects.filter(code=rule_code).exists():
        raise ValueError(f"No rule {rule_code!r}.")
    book = RuleBook.load(only_code=rule_code)
    meters = list(Meter.objects.filter(active=True).order_by("code"))
    by_zone: dict[str, list[Account]] = defaultdict(list)
    for account in Account.objects.filter(status=Account.Status.ACTIVE).order_by("pk"):
        by_zone[account.timezone].append(account)
    for day in periods.iter_days(since, until + dt.timedelta(days=1)):
        findings: list[Finding] = []
        for tz, accounts in sorted(by_zone.items()):
            at = periods.day_bounds_utc(day, tz)[1] - dt.timedelta(microseconds=1)
            for start in range(0, len(accounts), slice_size):
                result = findings_for_accounts(
                    accounts=accounts[start : start + slice_size], at=at, book=book, meters=meters
                )
                findings.extend(result.findings)
        findings.sort(key=lambda f: (f.account.external_id, f.meter.code if f.meter else ""))
        yield BacktestDay(day=day, findings=findings)
