"""The four-eyes policy: which adjustments Support applies alone and which wait for a Manager.

Pure functions over the policy values (tested by table), plus `policy_for(account)`, which
picks the most specific AdjustmentPolicy row. The limit is in the account's own currency,
converted to minor units with the currency's ISO 4217 exponent (no exchange rates): the
default 100 is 10000 cents, 100 yen, 100000 fils.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from metering.currencies import currency_minor_unit


@dataclass(frozen=True)
class Policy:
    support_limit: Decimal
    expiry_days: int
    allow_carried_balance: bool
    source: str = "default"


DEFAULT_POLICY = Policy(
    support_limit=Decimal(100), expiry_days=7, allow_carried_balance=False, source="default"
)


class PolicyError(ValueError):
    """The policy's limit cannot be expressed in the currency's minor unit."""


def limit_minor(limit: Decimal, currency: str) -> int:
    """The limit in the currency's minor units: exact, or a PolicyError (never rounded: a
    limit of 0.5 JPY is a misconfiguration, not 0 or 1 yen)."""
    scaled = limit.scaleb(currency_minor_unit(currency))
    if scaled != scaled.to_integral_value():
        raise PolicyError(f"A limit of {limit} is not a whole number of {currency} minor units.")
    return int(scaled)


def within_limit(*, amount_minor: int, currency: str, policy: Policy) -> bool:
    """Whether an amount (a credit, or a usage correction's price difference in absolute
    value) may be applied without a Manager: up to and including the limit."""
    return abs(amount_minor) <= limit_minor(policy.support_limit, currency)


def expires_at(*, submitted_at: dt.datetime, policy: Policy) -> dt.datetime:
    return submitted_at + dt.timedelta(days=policy.expiry_days)


def is_expired(*, expires: dt.datetime | None, now: dt.datetime) -> bool:
    return expires is not None and now >= expires


def policy_for(*, currency: str, tier: str) -> Policy:
    """The most specific policy row for (currency, tier), else the default."""
    from adjustments.models import AdjustmentPolicy

    rows = {
        (row.currency, row.tier): row
        for row in AdjustmentPolicy.objects.filter(currency__in=[currency, ""], tier__in=[tier, ""])
    }
    for key in ((currency, tier), (currency, ""), ("", tier), ("", "")):
        row = rows.get(key)
        if row is not None:
            return Policy(
                support_limit=row.support_limit,
                expiry_days=row.expiry_days,
                allow_carried_balance=row.allow_carried_balance,
                source=str(row),
            )
    return DEFAULT_POLICY
