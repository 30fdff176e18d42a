"""Billing writes. Import from the submodules or from here."""

from billing.services.periods import (
    PeriodInGrace,
    PeriodNotEnded,
    PeriodNotReady,
    PeriodOutsideSubscription,
    PeriodStateError,
    PeriodUsagePending,
    billing_period_begin_close,
    billing_period_close,
    billing_period_ensure,
    billing_period_finish_close,
)
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import (
    subscription_activate_due,
    subscription_cancel,
    subscription_check_new,
    subscription_create,
)

__all__ = [
    "PeriodInGrace",
    "PeriodNotEnded",
    "PeriodNotReady",
    "PeriodOutsideSubscription",
    "PeriodStateError",
    "PeriodUsagePending",
    "billing_period_begin_close",
    "billing_period_close",
    "billing_period_ensure",
    "billing_period_finish_close",
    "plan_create",
    "price_add",
    "subscription_activate_due",
    "subscription_cancel",
    "subscription_check_new",
    "subscription_create",
]
