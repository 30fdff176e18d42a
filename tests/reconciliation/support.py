"""Building reconciliation worlds: accounts on a plan with one billing period each, usage
events, the rollup, and a push to the simulated provider with chosen faults."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from billing.models import BillingPeriod, Plan
from billing.periods import bounds_for_dates
from billing.providers.simulated import FaultSettings, SimulatedProvider
from billing.services.plans import plan_create, price_add
from billing.services.push import usage_push
from metering.models import Account, Meter
from metering.services import rollups
from tests.billing.factories import SubscriptionFactory
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

_plans = itertools.count(1)


@dataclass
class Cell:
    account: Account
    meter: Meter
    period: BillingPeriod


def today() -> date:
    return datetime.now(UTC).date()


def meters_count_sum_max() -> list[Meter]:
    return [
        MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT, unit="calls"),
        MeterFactory(
            code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb", unit="GB"
        ),
        MeterFactory(
            code="gpu_peak", aggregation=Meter.Aggregation.MAX, value_property="gpus", unit="GPUs"
        ),
    ]


def plan_for(meters: list[Meter], unit_price: str = "0.01") -> Plan:
    plan = plan_create(code=f"recon-{next(_plans)}", name="Recon", currency="USD")
    for meter in meters:
        price_add(plan=plan, meter=meter, model="per_unit", unit_price=Decimal(unit_price))
    return plan


def account_with_period(
    *,
    external_id: str,
    tz: str,
    plan: Plan,
    start: date,
    end: date,
    state: str = BillingPeriod.State.OPEN,
) -> tuple[Account, BillingPeriod]:
    account = AccountFactory(external_id=external_id, timezone=tz, currency="USD")
    subscription = SubscriptionFactory(
        account=account, plan=plan, started_at=start, billing_anchor_day=start.day
    )
    bounds = bounds_for_dates(start_date=start, end_date=end, tz=tz)
    period = BillingPeriod.objects.create(
        subscription=subscription,
        account=account,
        start_date=start,
        end_date=end,
        timezone=tz,
        starts_at=bounds.starts_at,
        ends_at=bounds.ends_at,
        state=state,
        currency="USD",
    )
    return account, period


def usage_for(account: Account, meter: Meter, period: BillingPeriod, *, per_day: int = 3):
    """Unsaved events over the period: `per_day` a day, plus two in the first hour and one in
    the last half hour (where a clock skew moves usage across the boundary)."""
    events = []
    start = period.starts_at
    days = (period.ends_at - period.starts_at).days
    moments = [start + timedelta(minutes=20), start + timedelta(minutes=50)]
    for day in range(days):
        for n in range(per_day):
            moments.append(start + timedelta(days=day, hours=3 + 7 * n, minutes=11 * n))
    moments.append(period.ends_at - timedelta(minutes=30))
    for n, at in enumerate(moments):
        value = {
            Meter.Aggregation.COUNT: None,
            Meter.Aggregation.SUM: Decimal("1.5") + n % 4,
            Meter.Aggregation.MAX: Decimal(1 + (n * 7) % 13),
        }.get(meter.aggregation)
        events.append(event(account, meter, at, value))
    return events


def ingest(events) -> None:
    insert(*events)
    rollups.rollup_drain()


def push(faults: FaultSettings | None = None):
    return usage_push(provider=SimulatedProvider(faults=faults or FaultSettings()))
