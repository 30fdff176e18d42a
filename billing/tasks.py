"""Celery tasks of billing: thin wrappers, one service call each, safe to run twice.

Retries are for transient database trouble only (OperationalError: a dropped connection, a
deadlock, a serialization failure); anything else is a bug and fails loudly. A snapshot task
that runs twice (two beats, a redelivered message under acks_late) rewrites the same day's row.
"""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from billing.services import projection as projection_services
from config.celery import TRANSIENT_TASK as TRANSIENT


@shared_task(**TRANSIENT)
def projection_snapshots_take_daily(self) -> int:
    """Fan out one snapshot task per subscribed account (daily). Returns how many."""
    account_ids = projection_services.projection_snapshot_account_ids()
    for account_id in account_ids:
        projection_snapshot_take.delay(account_id=account_id)
    return len(account_ids)


@shared_task(**TRANSIENT)
def projection_snapshot_take(self, account_id: int, on_date: str | None = None) -> int | None:
    """Snapshot one account's projected invoice for `on_date` (ISO date; default: today in the
    account's zone). Returns the snapshot's id, or None without an open period."""
    day = dt.date.fromisoformat(on_date) if on_date else None
    snapshot = projection_services.projection_snapshot_take_for_account(
        account_id=account_id, on_date=day
    )
    return snapshot.pk if snapshot else None


@shared_task(**TRANSIENT)
def billing_periods_roll(self) -> dict:
    """Activate due subscriptions, close ended periods, open the next ones (hourly)."""
    from dataclasses import asdict

    from billing.services.periods import billing_periods_roll as roll

    return asdict(roll())


# --- Billing provider: push and pull ---------------------------------------------------------
# Both take locks inside their services: a push run holds a session advisory lock (a second
# run at the same time returns `busy`), and the ledger decides what is sent, so a redelivered
# or doubled task sends nothing twice. A pull only upserts.


@shared_task(**TRANSIENT)
def billing_usage_push(self) -> dict:
    """Push new usage to the billing provider through the ledger (every minute)."""
    from dataclasses import asdict

    from billing.services.push import usage_push

    return asdict(usage_push())


@shared_task(**TRANSIENT)
def billing_provider_pull(self, days: int | None = None) -> dict:
    """Pull the provider's daily usage summaries and invoices for reconciliation (hourly)."""
    from dataclasses import asdict

    from billing.services.pull import DEFAULT_DAYS, provider_pull

    now = dt.datetime.now(dt.UTC)
    until = now.date() + dt.timedelta(days=1)
    since = until - dt.timedelta(days=(days or DEFAULT_DAYS) + 1)
    result = asdict(provider_pull(since=since, until=until, now=now))
    result["since"], result["until"] = since.isoformat(), until.isoformat()
    from billing.services.pull import provider_secondary_pull

    secondary = provider_secondary_pull(since=since, until=until, now=now)
    if secondary is not None:
        result["secondary"] = {
            **asdict(secondary),
            "since": since.isoformat(),
            "until": until.isoformat(),
        }
    return result
