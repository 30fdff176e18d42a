"""Billing side of the demo: plans, subscriptions and seeded provider faults.

Runs after `manage.py demo` (metering) so the demo accounts and meters exist. Idempotent:
plans are found by code, an account that already has a subscription is left alone, and the
fault configuration is only replaced when it differs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import Plan, Subscription
from billing.providers.simulated import CUSTOMER_PREFIX, simulated_faults_configure
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.models import Account, Meter
from metering.services.demo import STORY_MISMATCH

# tier -> (flat fee in major units, minimum commitment in major units)
PLAN_FEES = {
    "free": (0, 0),
    "starter": (49, 0),
    "growth": (299, 500),
    "enterprise": (1500, 5000),
}

# The demo's prices, per meter. Decimals as strings: exact, never floats.
PRICES = {
    "api_calls": {
        "model": "graduated",
        "included_units": "10000",
        "tiers": [
            {"up_to": "1000000", "unit_price": "0.0004", "flat_fee": "0"},
            {"up_to": None, "unit_price": "0.0002", "flat_fee": "0"},
        ],
    },
    "tokens": {"model": "per_unit", "unit_price": "0.000002", "included_units": "100000"},
    "compute_seconds": {"model": "package", "package_size": 3600, "package_price": "0.90"},
    "storage_gb": {"model": "per_unit", "unit_price": "0.023", "included_units": "5"},
    "active_users": {
        "model": "volume",
        "tiers": [
            {"up_to": "100", "unit_price": "2.00", "flat_fee": "0"},
            {"up_to": "1000", "unit_price": "1.50", "flat_fee": "50"},
            {"up_to": None, "unit_price": "1.00", "flat_fee": "550"},
        ],
    },
}

# Included units per period by tier, above what an ordinary account of the tier uses, so the
# default quota rule (80% of the included units) stays quiet for ordinary demo accounts; the
# near-quota story has a limit of its own (account metadata `limits`).
INCLUDED_BY_TIER = {
    "tokens": {
        "free": 1_000_000,
        "starter": 3_000_000,
        "growth": 6_000_000,
        "enterprise": 15_000_000,
    },
    "storage_gb": {"free": 50, "starter": 150, "growth": 400, "enterprise": 1000},
}

# Faults for the simulated provider, so reconciliation has real mismatches to find: on the
# mismatch story's account only (metadata demo_story), so every other account reconciles clean.
DEMO_FAULTS = {
    "name": "demo faults (seed 42, one account)",
    "seed": 42,
    "drop_rate": Decimal("0.05"),
    "duplicate_rate": Decimal("0.01"),
    "delay_rate": Decimal("0.02"),
    "delay_seconds": 3 * 3600,
    "skew_rate": Decimal("0.01"),
    "skew_seconds": 6 * 3600,
}


@dataclass
class BillingDemoSummary:
    plans_created: list[str] = field(default_factory=list)
    subscriptions_created: int = 0
    faults_configured: bool = False


def _minor(currency: str, major: int) -> int:
    from billing.money import currency_exponent

    return major * 10 ** currency_exponent(currency)


def _plan_ensure(*, tier: str, currency: str, meters: dict[str, Meter], actor) -> tuple[Plan, bool]:
    code = f"{tier}-{currency.lower()}"
    plan = Plan.objects.filter(code=code).first()
    if plan is not None:
        return plan, False
    flat, minimum = PLAN_FEES[tier]
    plan = plan_create(
        code=code,
        name=f"{tier.title()} ({currency})",
        currency=currency,
        flat_fee_minor=_minor(currency, flat),
        minimum_commitment_minor=_minor(currency, minimum),
        actor=actor,
    )
    for meter_code, spec in PRICES.items():
        if meter_code in meters:
            if meter_code in INCLUDED_BY_TIER:
                spec = {**spec, "included_units": str(INCLUDED_BY_TIER[meter_code][tier])}
            price_add(plan=plan, meter=meters[meter_code], actor=actor, **spec)
    return plan, True


def billing_demo_seed(*, today: dt.date | None = None, with_faults: bool = True, actor=None):
    """Put every demo account on its tier's plan from 90 days ago, anchored on a day of month
    derived from the account (so period ends differ), and seed provider faults."""
    summary = BillingDemoSummary()
    now = timezone.now()
    today = today or now.date()
    meters = {m.code: m for m in Meter.objects.filter(code__in=PRICES)}
    with transaction.atomic():
        subscribed = set(Subscription.objects.values_list("account_id", flat=True))
        for account in Account.objects.filter(metadata__demo=True).order_by("pk"):
            tier = account.tier if account.tier in PLAN_FEES else "starter"
            plan, created = _plan_ensure(
                tier=tier, currency=account.currency, meters=meters, actor=actor
            )
            if created:
                summary.plans_created.append(plan.code)
            if account.pk in subscribed:
                continue
            anchor = 1 + (account.pk * 7) % 28
            subscription_create(
                account=account,
                plan=plan,
                started_at=today - dt.timedelta(days=90),
                billing_anchor_day=anchor,
                actor=actor,
                now=now,
            )
            summary.subscriptions_created += 1
    if with_faults:
        from billing.models import SimulatedFaultConfig

        # Without the story's account (a demo of fewer than 8 accounts), every account.
        customers = sorted(
            f"{CUSTOMER_PREFIX}{external_id}"
            for external_id in Account.objects.filter(
                metadata__demo=True, metadata__demo_story=STORY_MISMATCH
            ).values_list("external_id", flat=True)
        )
        current = SimulatedFaultConfig.objects.filter(active=True).first()
        if (
            current is None
            or current.name != DEMO_FAULTS["name"]
            or sorted(current.customers or []) != customers
        ):
            simulated_faults_configure(**DEMO_FAULTS, customers=customers, actor=actor)
            summary.faults_configured = True
    return summary
