"""Celery tasks of reconciliation: thin wrappers, one service call each, safe to run twice.

The nightly task fans out one task per account, so more workers reconcile faster. An account's
task takes the account's advisory lock inside the service (two deliveries of the same task
take turns), and a rerun updates the same mismatches: running it twice does no harm.
"""

from __future__ import annotations

import datetime as dt

from celery import shared_task

from config.celery import TRANSIENT_TASK as TRANSIENT


@shared_task(**TRANSIENT)
def reconcile_all(self, period_end_before: str | None = None) -> int:
    """Fan out one reconciliation per account with a period to reconcile (nightly)."""
    from reconciliation.selectors import accounts_to_reconcile

    before = dt.date.fromisoformat(period_end_before) if period_end_before else None
    account_ids = accounts_to_reconcile(period_end_before=before)
    for account_id in account_ids:
        reconcile_account_task.delay(account_id=account_id, period_end_before=period_end_before)
    return len(account_ids)


@shared_task(**TRANSIENT)
def reconcile_account_task(self, account_id: int, period_end_before: str | None = None) -> int:
    """Reconcile one account against each platform (pulling their summaries first: the
    primary, then the read-only secondary when one is set); returns the primary's run id."""
    from metering.models import Account
    from reconciliation.services import reconciliation_run_platforms

    account = Account.objects.filter(pk=account_id).first()
    if account is None:
        return 0
    before = dt.date.fromisoformat(period_end_before) if period_end_before else None
    runs = reconciliation_run_platforms(account=account, period_end_before=before, trigger="task")
    return runs[0].pk
