"""Pushing usage to the billing provider exactly once, with our own ledger as the authority.

A run (`usage_push`) takes a session-level advisory lock, so two beats or a redelivered task
never push at the same time (the second returns at once, `busy`), then:

1. **Enqueue.** Claim events from metering's rolled-up feed (the rollup drain appends each
   event there in the transaction that rolls it up) with DELETE ... RETURNING, and write the
   ledger entries for those events in the same transaction. Nothing can be skipped: an event
   committed late is simply fed later, and a claim that fails leaves its rows.

   - count and sum meters go to a provider `sum` meter, one entry per event: identifier
     `mo-<installation id>-e<event id>` (billing.services.installation), value 1 (count) or
     the event's value (sum). A correction pushes what it changes in what the provider holds
     for the corrected event (the same timestamp), which may be negative: Stripe takes
     negative values to fix usage. Its value is settled just before it is first sent
     (billing.services.push.corrections).
   - max, unique_count and latest meters go to a provider `last` meter as the period-to-date
     value of the billing period (the stored period containing the event, else the period
     the subscription's anchor gives, else the local calendar month), recomputed from the raw
     events; a new entry `mo-<installation>-g<account>-<meter>-<period start>-<seq>` only
     when the value changed. Its timestamp is now (clamped into the period and always after the previous
     one, so "last" picks the newest value).
   - zero values are not pushed.

2. **Send.** Pending entries go to the provider in chunks. The attempt (attempts,
   first_sent_at, the exact payload) is committed *before* the provider call, the answer
   *after* it. A crash in between leaves an entry pending with first_sent_at set.

Billing holds (alerts.models.BillingHold, seen here through metering.account_holds, since
billing may not depend on alerts): the events of an account whose billing is held stay in the
rolled-up feed, and its pending entries (enqueued before the hold opened) stay pending; both
go on the first run after the hold is released, exactly once like everything else. The held
accounts are read once per enqueue batch and once per send chunk.

The rules, in the order a run applies them:

- sent / acknowledged / too_old / rejected / superseded / failed entries are never sent again
  (only staff may put a failed entry back to pending);
- a pending entry whose timestamp is older than 35 days (less a 5-minute margin) becomes
  `too_old`, never sent: recorded, not silently dropped;
- a pending period-to-date entry with a newer entry for the same key becomes `superseded`;
- a pending entry never attempted, or first sent less than 24 hours ago, is sent with its
  original identifier, idempotency key and payload: within 24 hours the provider's dedupe
  (and Stripe's idempotency keys) make a resend count once;
- a pending event entry first sent 24 hours ago or more may not be deduplicated any more, so
  it is not blindly resent. For its (account, meter, UTC day) the provider's daily summary T
  is compared with A (our sent and acknowledged values that day) and P (the stale pending
  values): T == A + P, it was counted: acknowledged; T == A, it was not: resent (its
  24-hour window restarts); anything else: failed, for a person. While entries of that day
  are still pending inside their 24-hour window the check waits for a later run. A stale
  period-to-date entry is simply resent (a `last` meter keeps one value: a resend is
  harmless);
- answers: recorded or duplicate -> acknowledged; accepted (v2 stream, asynchronous) -> sent;
  too old -> too_old; refused -> rejected; transient -> stays pending (failed after
  MAX_ATTEMPTS), with a new idempotency key when the provider saved an answer for the old one;
- an event value with more significant digits than the provider takes (15) is sent as parts
  that add up to it exactly (`<identifier>`, `<identifier>.p2`, ...: one answer for the entry);
  a period-to-date value cannot be split and is recorded rejected, never sent;
- when the provider asks us to wait longer than we may (`halted`), the run stops and the rest
  stays pending for the next run.

The package, by role: common (statuses, limits, PushResult, customers and meters at the
provider), enqueue (step 1), corrections (settling a correction's value), send (step 2, and
the run: `usage_push` under the lock), resolve (stale entries; staff retry of failed entries,
recorded as PushLedgerChange rows with the user and the reason).
"""

from billing.services.push.common import (
    EDGE_MARGIN,
    ENQUEUE_BATCH,
    MAX_ATTEMPTS,
    PUSH_LOCK_KEY,
    SEND_CHUNK,
    SUM_METERS,
    A,
    Kind,
    PushResult,
    Status,
    meter_spec,
    provider_customer_ensure,
    provider_meter_ensure,
    too_old_cutoff,
)
from billing.services.push.enqueue import push_ledger_enqueue
from billing.services.push.resolve import ledger_retry_failed, push_ledger_resolve_stale
from billing.services.push.send import push_ledger_send, usage_push

__all__ = [
    "EDGE_MARGIN",
    "ENQUEUE_BATCH",
    "MAX_ATTEMPTS",
    "PUSH_LOCK_KEY",
    "SEND_CHUNK",
    "SUM_METERS",
    "A",
    "Kind",
    "PushResult",
    "Status",
    "ledger_retry_failed",
    "meter_spec",
    "provider_customer_ensure",
    "provider_meter_ensure",
    "push_ledger_enqueue",
    "push_ledger_resolve_stale",
    "push_ledger_send",
    "too_old_cutoff",
    "usage_push",
]
