"""An account on a plan with a sum meter priced at one major unit per unit, with usage."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.models import Group
from django.utils import timezone

from billing.models import BillingPeriod
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.currencies import currency_minor_unit
from metering.models import Account, Meter
from metering.services.rollups import rollup_drain
from tests.billing.factories import AccountFactory
from tests.metering.factories import MeterFactory
from tests.metering.rollup_support import event, insert


@dataclass
class Scenario:
    account: Account
    meter: Meter
    period: BillingPeriod


def scenario(
    *, currency: str = "USD", tier: str = "", per_day: int = 100, days: int = 1, past=False
):
    """`days` local days of `per_day` units (one event of 10 units each) from the period's
    start; the unit price is 1 in the currency, so the period's total is per_day * days
    major units."""
    now = timezone.now()
    today = now.date()
    account = AccountFactory(currency=currency, tier=tier)
    meter = MeterFactory(
        code=f"gb_{account.pk}",
        name="Storage",
        aggregation=Meter.Aggregation.SUM,
        value_property="gb",
        unit="GB",
    )
    plan = plan_create(code=f"p-{account.pk}", name="Storage plan", currency=currency)
    price_add(plan=plan, meter=meter, model="per_unit", unit_price=Decimal(1))
    start = today.replace(day=1)
    if past:  # usage in last month's period (ended, not closed yet)
        start = (start - dt.timedelta(days=1)).replace(day=1)
    subscription_create(account=account, plan=plan, started_at=start)
    period = BillingPeriod.objects.get(account=account, start_date=start)
    events = []
    for n in range(days):
        day = period.start_date + dt.timedelta(days=n)
        if day > today or day >= period.end_date:
            break
        start = dt.datetime.combine(day, dt.time(0, 30), tzinfo=dt.UTC)
        events.extend(
            event(account, meter, start + dt.timedelta(minutes=i), Decimal(10))
            for i in range(per_day // 10)
        )
    insert(*events)
    rollup_drain()
    return Scenario(account=account, meter=meter, period=period)


def minor(amount: int | str, currency: str) -> int:
    return int(Decimal(amount).scaleb(currency_minor_unit(currency)))


def role_user(django_user_model, role: str | None, name: str | None = None):
    user = django_user_model.objects.create_user(
        username=name or f"{role or 'nogroup'}-{django_user_model.objects.count()}",
        password="pw-not-used-1",
        is_staff=True,
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache
