"""Celery tasks of adjustments: thin wrappers, safe to run twice (expiry is a row-locked
compare of the state; a second run finds nothing due)."""

from __future__ import annotations

from celery import shared_task

from config.celery import TRANSIENT_TASK as TRANSIENT


@shared_task(**TRANSIENT)
def adjustments_expire_task(self) -> int:
    """Expire the requests not decided in their policy's number of days (hourly)."""
    from adjustments.services import adjustments_expire

    return adjustments_expire()


@shared_task(**TRANSIENT)
def audit_catch_up_task(self) -> int:
    """Mirror into the audit log the history rows written in bulk (every five minutes)."""
    from adjustments.audit import audit_catch_up

    return audit_catch_up()
