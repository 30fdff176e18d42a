"""Scenarios for the projected-invoice tests: a plan, a subscription and daily usage written as
raw events and drained into the rollups (the path production takes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from billing.models import Plan, Subscription
from billing.periods import local_midnight_utc
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.models import Account, Meter
from metering.services.rollups import rollup_drain
from tests.billing.factories import AccountFactory
from tests.metering.factories import MeterFactory
from tests.metering.rollup_support import event, insert

D = dt.date
ONE_DAY = dt.timedelta(days=1)
FEB_1_2024 = D(2024, 2, 1)


def at(day: dt.date, hour: int, tz: str = "UTC") -> dt.datetime:
    """The UTC instant of `hour`:00 local time on `day` in `tz`."""
    return local_midnight_utc(day, tz) + dt.timedelta(hours=hour)


def days(first: dt.date, end: dt.date):
    day = first
    while day < end:
        yield day
        day += ONE_DAY


def is_weekend(day: dt.date) -> bool:
    return day.weekday() >= 5


def sum_usage(
    account: Account,
    meter: Meter,
    first: dt.date,
    end: dt.date,
    per_day: Callable[[dt.date], dict[str, Decimal | int]],
    *,
    hour: int = 12,
    drain: bool = True,
) -> int:
    """One event per dimension value per local day with the day's value (sum meters); values
    are keyed by the meter's first dimension (or "" without dimensions)."""
    dimension = (meter.dimensions or [None])[0]
    events = []
    for day in days(first, end):
        for value_key, value in per_day(day).items():
            if not value:
                continue
            properties = {dimension: value_key} if dimension else {}
            events.append(
                event(account, meter, at(day, hour, account.timezone), value, properties=properties)
            )
    insert(*events)
    if drain:
        rollup_drain()
    return len(events)


def count_usage(
    account: Account,
    meter: Meter,
    first: dt.date,
    end: dt.date,
    per_day: Callable[[dt.date], int],
    *,
    hour: int = 12,
    drain: bool = True,
) -> int:
    """`per_day(day)` count events on each local day, spread over the hour after `hour`."""
    events = []
    for day in days(first, end):
        start = at(day, hour, account.timezone)
        events.extend(
            event(account, meter, start + dt.timedelta(seconds=second))
            for second in range(per_day(day))
        )
    insert(*events)
    if drain:
        rollup_drain()
    return len(events)


@dataclass
class ApiCalls:
    """The support scenario: API calls (a sum meter by endpoint) on a graduated price with 1M
    included, a $49 plan fee and a $5,000 minimum commitment."""

    account: Account
    meter: Meter
    plan: Plan
    subscription: Subscription


def api_calls_scenario(
    *,
    now: dt.datetime,
    tz: str = "UTC",
    minimum_minor: int = 5_000_00,
    started: dt.date = FEB_1_2024,
) -> ApiCalls:
    """Periods are opened from `started` (anchor: its day) through the one containing `now`."""
    account = AccountFactory(timezone=tz)
    meter = MeterFactory(
        code="api_calls",
        name="API calls",
        aggregation=Meter.Aggregation.SUM,
        value_property="calls",
        dimensions=["endpoint", "region"],
        unit="API calls",
    )
    plan = plan_create(
        code="scale",
        name="Scale",
        currency="USD",
        flat_fee_minor=49_00,
        minimum_commitment_minor=minimum_minor,
    )
    price_add(
        plan=plan,
        meter=meter,
        model="graduated",
        included_units="1000000",
        tiers=[
            {"up_to": "9000000", "unit_price": "0.0004"},
            {"up_to": None, "unit_price": "0.0002"},
        ],
    )
    subscription = subscription_create(
        account=account,
        plan=plan,
        started_at=started,
        now=now,
    )
    return ApiCalls(account=account, meter=meter, plan=plan, subscription=subscription)


def api_calls_per_day(day: dt.date) -> dict[str, int]:
    """Weekdays 1M calls (750K to /v1/search), weekend days 200K (150K to /v1/search)."""
    if is_weekend(day):
        return {"/v1/search": 150_000, "/v1/items": 50_000}
    return {"/v1/search": 750_000, "/v1/items": 250_000}


@dataclass
class CountScenario:
    account: Account
    meter: Meter
    plan: Plan
    subscription: Subscription


def count_scenario(*, started: dt.date, now: dt.datetime, tz: str = "UTC") -> CountScenario:
    """Requests (a count meter) at $0.50 each, no plan fee, no minimum."""
    account = AccountFactory(timezone=tz)
    meter = MeterFactory(code="requests", name="Requests", unit="requests")
    plan = plan_create(code="basic", name="Basic", currency="USD")
    price_add(plan=plan, meter=meter, model="per_unit", unit_price="0.5")
    subscription = subscription_create(account=account, plan=plan, started_at=started, now=now)
    return CountScenario(account=account, meter=meter, plan=plan, subscription=subscription)
