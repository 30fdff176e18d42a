"""Billing periods for metering's account usage page.

Metering cannot import billing (imports flow metering <- billing), so the page asks whatever
period source is registered; BillingConfig.ready registers this one. It answers the account's
open billing period, the one before it, and the units the plan includes per meter.
"""

from __future__ import annotations

import datetime as dt

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
    if before is not None:
        previous = UsagePeriod(before.start_date, before.end_date, "billing")
    else:
        # The first period: compare with as many days just before it (nothing was billed then).
        length = period.end_date - period.start_date
        previous = UsagePeriod(period.start_date - length, period.start_date, "before_billing")
    prices = period.subscription.plan.prices.select_related("meter")
    return AccountPeriods(
        current=UsagePeriod(period.start_date, period.end_date, "billing"),
        previous=previous,
        plan_name=period.subscription.plan.name,
        included_units={price.meter.code: price.included_units for price in prices},
    )
