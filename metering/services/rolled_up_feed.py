"""The rolled-up feed's consumer side: claim events the rollup drain has folded in.

The drain appends to the feed (metering.models.RolledUpEvent, rollups_sql.FEED_CLAIMED); a
downstream consumer (the push to the billing provider) claims from it here. Raw SQL for the
same reason as the drain's claim: one DELETE ... RETURNING claims and removes a batch.
"""

from __future__ import annotations

from django.db import connection

# Claim a batch in key order (account, event), so a backlog is taken an account at a time along
# the primary key. The picked keys are deleted by key, not ctid (DESIGN: Citus); the join on
# the full primary key makes every delete an index probe, so a batch costs the same whatever
# the backlog. SKIP LOCKED: a second consumer (there should be none: the caller's own lock)
# takes other rows instead of waiting. Exactly once rests on the DELETE: a row two claimers
# pick is returned by only one of them.
CLAIM = """
DELETE FROM metering_rolledupevent f
USING (
    SELECT account_id, event_id FROM metering_rolledupevent
    ORDER BY account_id, event_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) picked
WHERE f.account_id = picked.account_id AND f.event_id = picked.event_id
RETURNING f.event_id
"""


def rolled_up_events_claim(*, limit: int) -> list[int]:
    """Remove up to `limit` events from the rolled-up feed and return their ids, in the
    caller's transaction: if it rolls back, the events are back in the feed for the next
    claim. Call it inside `transaction.atomic()` with whatever records the events' use."""
    with connection.cursor() as cursor:
        cursor.execute(CLAIM, {"limit": limit})
        return sorted(row[0] for row in cursor.fetchall())


def rolled_up_feed_count() -> int:
    """Events in the feed, not claimed yet."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_rolledupevent")
        return cursor.fetchone()[0]
