"""Celery tasks of alerts: thin wrappers, one service call each, safe to run twice (each
account is evaluated under an advisory lock, and an alert is unique while open)."""

from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.utils import timezone

from alerts import services
from config.celery import TRANSIENT_TASK as TRANSIENT


@shared_task(**TRANSIENT)
def alerts_evaluate(self) -> int:
    """Fan out one evaluation task per slice of active accounts, all as of the same instant
    (every 15 minutes). Returns how many slices."""
    at = timezone.now().isoformat()
    ids = services.account_ids_to_evaluate()
    slices = 0
    for start in range(0, len(ids), services.SLICE_SIZE):
        alerts_evaluate_slice.delay(account_ids=ids[start : start + services.SLICE_SIZE], at=at)
        slices += 1
    return slices


@shared_task(**TRANSIENT)
def alerts_evaluate_slice(self, account_ids: list[int], at: str | None = None) -> dict:
    """Evaluate the rules for these accounts as of `at` (ISO time; default now)."""
    run = services.alerts_evaluate_accounts(
        account_ids=account_ids, at=dt.datetime.fromisoformat(at) if at else None
    )
    return {
        "accounts": run.accounts,
        "opened": len(run.opened),
        "escalated": len(run.escalated),
        "resolved": len(run.resolved),
    }


@shared_task(**TRANSIENT)
def alerts_billing_holds_window(self) -> list[int]:
    """Warn the CS team of holds whose held usage nears the provider's 35-day window (hourly;
    once per hold). Returns the holds warned."""
    return services.billing_holds_window_warn()
