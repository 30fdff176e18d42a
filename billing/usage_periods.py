"""Billing periods for metering's account usage page.

Metering cannot import billing (imports flow metering <- billing), so the page asks whatever
period source is registered; BillingConfig.ready registers this one. It answers the account's
open billing period, the one before it, and the units the plan includes per meter.
"""

from __future__ import annotations

import datetime as dt

from billing.models import BillingPeriod
from billing.periods import local_days_of
from billing.selectors import period_open, period_previous
from metering.dashboard_selectors import AccountPeriods, UsagePeriod
from metering.models import Account


def account_usage_periods(
    *, account: Account, at: dt.datetime | None = None
) -> AccountPeriods | None:
    """None when the account has no open period at `at` (the page then uses calendar months).
    Three queries."""
    period = period_open(account=account, at=at)
    if period is None:
        return None
    before = period_previous(period=period)
    current = _usage_period(period, account.timezone)
    if before is not None:
        previous = _usage_period(before, account.timezone)
    else:
        # The first period: compare with as many days just before it (nothing was billed then).
        length = current.end - current.first
        previous = UsagePeriod(current.first - length, current.first, "before_billing")
    prices = period.subscription.plan.prices.select_related("meter")
    return AccountPeriods(
        current=current,
        previous=previous,
        plan_name=period.subscription.plan.name,
        included_units={price.meter.code: price.included_units for price in prices},
    )


def _usage_period(period: BillingPeriod, tz: str) -> UsagePeriod:
    """The period as the page shows it: its days in the account's current zone and its own UTC
    bounds (they differ only for a period cut in a zone the account has since left)."""
    first, end = local_days_of(starts_at=period.starts_at, ends_at=period.ends_at, tz=tz)
    return UsagePeriod(first, end, "billing", starts_at=period.starts_at, ends_at=period.ends_at)
