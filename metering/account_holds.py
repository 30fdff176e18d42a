"""Billing holds, as the apps below alerts see them: a registry alerts fills.

Alerts owns billing holds (alerts.models.BillingHold), but the push to the billing provider
(billing), the projected-invoice page (billing) and `GET /api/v1/accounts/{external_id}`
(metering) must know about them, and none of these may depend on alerts (DESIGN: imports flow
upwards). So alerts registers a source here from its AppConfig.ready, the way billing registers
its billing periods with metering's usage page (metering.dashboard_selectors).

A source answers two questions:

- `held_account_ids()`: the ids of every account whose push is held, in one query (the push
  asks once per batch, never per event);
- `account_hold(account_id)`: the account's active hold as an `AccountHold`, or None.

With no source registered (alerts not installed) nothing is held.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class AccountHold:
    """An active billing hold: since when and why (what the API and the pages show)."""

    status: str
    since: datetime
    reason: str
    hold_id: int | None = None


@dataclass(frozen=True)
class HoldSource:
    held_account_ids: Callable[[], set[int]]
    account_hold: Callable[[int], AccountHold | None]


_sources: list[HoldSource] = []


def account_hold_source_register(source: HoldSource) -> None:
    """Register a source of billing holds. Registering an equal source twice is a no-op
    (AppConfig.ready may run more than once)."""
    if source not in _sources:
        _sources.append(source)


def held_account_ids() -> set[int]:
    """Every account whose push to the billing provider is held (one query per source)."""
    held: set[int] = set()
    for source in _sources:
        held |= set(source.held_account_ids())
    return held


def account_hold(account_id: int) -> AccountHold | None:
    """The account's active billing hold, or None."""
    for source in _sources:
        hold = source.account_hold(account_id)
        if hold is not None:
            return hold
    return None
