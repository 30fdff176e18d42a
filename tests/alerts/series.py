"""Synthetic usage series for the alert tests, written the way production writes them: raw
usage events inserted (the trigger queues them in the rollup inbox) and drained into the
hourly and daily rollups by the real rollup drain."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

from metering.models import Account, Meter
from metering.periods import day_start_utc
from metering.services.rollups import rollup_drain
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

ONE_DAY = dt.timedelta(days=1)
# A Wednesday; series end the day before unless a test adds today's usage.
TODAY = dt.date(2024, 3, 20)


def at(day: dt.date, hour: int = 0, minute: int = 0, tz: str = "UTC") -> dt.datetime:
    return day_start_utc(day, tz) + dt.timedelta(hours=hour, minutes=minute)


def api_meter() -> Meter:
    return MeterFactory(
        code="api_calls",
        name="API calls",
        aggregation=Meter.Aggregation.SUM,
        value_property="calls",
        dimensions=["endpoint"],
        unit="API calls",
    )


def account(**kwargs) -> Account:
    return AccountFactory(**kwargs)


def usage(
    account: Account,
    meter: Meter,
    first: dt.date,
    end: dt.date,
    per_day: Callable[[dt.date], int | dict[str, int]],
    *,
    hour: int = 12,
) -> None:
    """Usage on each local day of [first, end), one event per endpoint at `hour`:00 local
    time; `per_day` answers a number (all on /v1/items) or {endpoint: calls}."""
    events = []
    day = first
    while day < end:
        values = per_day(day)
        if not isinstance(values, dict):
            values = {"/v1/items": values}
        for endpoint, calls in values.items():
            if calls:
                events.append(
                    event(
                        account,
                        meter,
                        at(day, hour, tz=account.timezone),
                        Decimal(calls),
                        properties={"endpoint": endpoint},
                    )
                )
        day += ONE_DAY
    insert(*events)
    rollup_drain()


def jitter(day: dt.date, base: int, percent: int = 10) -> int:
    """A deterministic wobble of +-percent around base (no randomness in tests)."""
    step = (day.toordinal() * 7919) % (2 * percent + 1) - percent
    return base + base * step // 100


def weekly(day: dt.date) -> int:
    """Weekdays about 1,000 calls, weekends about 200."""
    return jitter(day, 200 if day.weekday() >= 5 else 1000)
