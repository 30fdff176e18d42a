"""Celery tasks of metering: thin wrappers, one service call each, safe to run twice.

Retries are for transient database trouble only (a dropped connection, a deadlock, a
serialization failure: Django raises OperationalError for all of them); anything else is a bug
and fails loudly. Both tasks take the rollup advisory lock inside the service, so two beats or
a redelivered message (acks_late) cannot apply anything twice: a second drain that finds the
lock held returns at once, and whatever it would have drained is still in the inbox for the
next run.
"""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task
from django.conf import settings

from config.celery import TRANSIENT_TASK as TRANSIENT
from metering.services import quarantine, rollups

# One run drains at most this many batches (ROLLUP_BATCH_SIZE events each) so that a backlog
# is worked off in bounded runs, one per minute, instead of one run that never ends.
DRAIN_MAX_BATCHES = 100


@shared_task(**TRANSIENT)
def rollup_drain(self, partition: int | None = None) -> dict:
    """Fold pending events into the rollups (every minute). With ROLLUP_DRAIN_WORKERS above 1,
    the scheduled call (no `partition`) queues one task per partition, which drain their own
    accounts side by side."""
    partitions = settings.ROLLUP_DRAIN_WORKERS
    if partition is None and partitions > 1:
        for k in range(partitions):
            rollup_drain.delay(partition=k)
        return {"partitions_queued": partitions}
    if partition is not None and partition >= partitions:
        # Queued before ROLLUP_DRAIN_WORKERS was lowered: those accounts now belong to the
        # remaining partitions, whose own tasks drain them.
        return {"stale_partition": partition, "partitions": partitions}
    result = rollups.rollup_drain(
        wait=False,
        max_batches=DRAIN_MAX_BATCHES,
        partition=partition or 0,
        partitions=partitions,
    )
    return asdict(result)


@shared_task(**TRANSIENT)
def rollup_self_check(self, days: int = 3) -> int:
    """Compare recent rollups with the raw events and repair drift (nightly). Returns the id of
    the RollupCheck that records the outcome."""
    return rollups.rollup_self_check(days=days).pk


@shared_task(**TRANSIENT)
def quarantine_replay_queued(self, ids: list[int], actor_id: int | None = None) -> dict:
    """Replay the quarantined events `ids` (queued on commit when their account or meter is
    created). Safe to run twice: an event replayed already counts as `already_replayed`."""
    return quarantine.quarantine_replay(ids=ids, actor=_user(actor_id))


@shared_task(**TRANSIENT)
def account_rollups_rebuild(self, account_id: int) -> int:
    """Rebuild an account's rollups in its current time zone (queued on commit when the zone
    changes). Safe to run twice: a rebuild recomputes from the raw events under the rollup
    lock, so a second run writes the same rows."""
    rollups.rollups_rebuild_account_daily(account_id=account_id)
    return account_id


def _user(user_id: int | None):
    if user_id is None:
        return None
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(pk=user_id).first()
