"""Celery tasks of notifications: thin wrappers, one service call each, safe to run twice (every
delivery is claimed by a compare-and-set before it is sent)."""

from __future__ import annotations

from celery import shared_task

from config.celery import TRANSIENT_TASK as TRANSIENT
from notifications import services

DISPATCH_BATCH = 100


@shared_task(**TRANSIENT)
def webhook_deliveries_dispatch(self) -> int:
    """Send the customer webhooks that are due (queued on commit by an enqueue, and every
    minute). A full batch queues the next one at once, so a backlog drains without waiting for
    the next minute. Returns how many were attempted."""
    attempted = services.webhook_deliveries_dispatch(limit=DISPATCH_BATCH)
    if attempted >= DISPATCH_BATCH:
        webhook_deliveries_dispatch.delay()
    return attempted
