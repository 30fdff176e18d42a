"""The rolled-up feed's consumer side: claim events the rollup drain has folded in.

The drain appends to the feed (metering.models.RolledUpEvent, rollups_sql.FEED_CLAIMED); a
downstream consumer (the push to the billing provider) claims from it here. Raw SQL for the
same reason as the drain's claim: one DELETE ... RETURNING claims and removes a batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

# Claim a batch in key order (account, event), so a backlog is taken an account at a time along
# the primary key, and delete the picked rows by key, not by ctid (DESIGN: Citus). SKIP LOCKED:
# a second consumer (there should be none: the caller's own lock) takes other rows instead of
# waiting. Exactly once rests on the DELETE: a row two claimers pick is returned by only one.
#
# The bounds on the deleted rows (the picked keys' account range and lowest event id, as
# InitPlan parameters) are index conditions: without them the planner joins the picked keys to
# a sequential scan of the whole feed (by EXPLAIN on a backlog of 1M rows: 180 ms per
# 5,000-row batch, against 21 ms with them; the push inbox this replaces took 675 ms), which
# makes draining a large backlog quadratic.
CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT account_id, event_id FROM metering_rolledupevent
    WHERE account_id BETWEEN %(lo)s AND %(hi)s
    ORDER BY account_id, event_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM metering_rolledupevent f
USING picked
WHERE f.account_id = picked.account_id AND f.event_id = picked.event_id
  AND f.account_id BETWEEN (SELECT min(account_id) FROM picked)
                       AND (SELECT max(account_id) FROM picked)
  AND f.event_id >= (SELECT min(event_id) FROM picked)
RETURNING f.event_id
"""


BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1


def _ranges_between(skip: Iterable[int]) -> list[tuple[int, int]]:
    """The account id ranges (inclusive) that leave out exactly the `skip` ids."""
    ranges, lo = [], BIGINT_MIN
    for held in sorted(set(skip)):
        if held > lo:
            ranges.append((lo, held - 1))
        lo = held + 1
    ranges.append((lo, BIGINT_MAX))
    return ranges


def rolled_up_events_claim(*, limit: int, skip_accounts: Iterable[int] = ()) -> list[int]:
    """Remove up to `limit` events from the rolled-up feed and return their ids, in the
    caller's transaction: if it rolls back, the events are back in the feed for the next
    claim. Call it inside `transaction.atomic()` with whatever records the events' use.

    Events of `skip_accounts` stay in the feed, untouched, for a later claim (the push leaves
    the usage of accounts whose billing is held there until the hold is released). They are
    stepped around, not over: the claim runs once per account range between the skipped ids,
    each a range scan of the key that starts past a skipped account's rows, so a held backlog
    of a million rows costs nothing per batch (bench/push_hold.py); a filter on the ids would
    read through the held rows at every batch."""
    ids: list[int] = []
    with connection.cursor() as cursor:
        for lo, hi in _ranges_between(skip_accounts):
            cursor.execute(CLAIM, {"limit": limit - len(ids), "lo": lo, "hi": hi})
            ids += [row[0] for row in cursor.fetchall()]
            if len(ids) >= limit:
                break
    return sorted(ids)


def rolled_up_feed_count() -> int:
    """Events in the feed, not claimed yet."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_rolledupevent")
        return cursor.fetchone()[0]
