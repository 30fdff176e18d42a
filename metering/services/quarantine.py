"""The quarantine: events kept until their account and meter exist, then replayed.

Lifecycle of a QuarantinedEvent:

    pending ──(account and meter now exist: quarantine_mark_replayable)──> replayable
    pending | replayable ──(quarantine_replay)──> replayed  (stored, or already stored: `event`)
                                                └─> failed    (conflict, or a value the meter
                                                               refuses: `replay_result`)
                                                └─> pending   (still unattributable)

A replay re-ingests the payload exactly as it was received, through the same path as the API
(metering.services.ingest), validated against the time it was first received (so an event that
was on time is not refused as too old or too new because it waited here) and marked late against
the time it is written. Replaying twice is harmless: the second time the event is a duplicate.

Creating an account or a meter (metering.services.accounts) marks its events replayable and,
once that commits, queues a task (metering.tasks.quarantine_replay_queued) that replays up to
AUTO_REPLAY_LIMIT of them, so a product backend that provisions an account after its first events
still gets them counted without staff, and its request does not wait for the replay. The rest
(a backlog larger than that) is replayed from the admin's quarantine page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from metering import exact_json, ingest_sql
from metering.models import Account, Meter, QuarantinedEvent
from metering.services.ingest import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    IngestLimits,
    ItemResult,
    ParsedEvent,
    late_cutoff,
    parse_item,
    store_parsed,
)

AUTO_REPLAY_LIMIT = 10_000
REPLAY_CHUNK = 1_000
_UPDATED_FIELDS = ["status", "replay_result", "replayed_at", "event"]


def _history(objs: list[QuarantinedEvent], actor) -> None:
    # _history_user set explicitly: during an API request simple-history would otherwise take
    # request.user, which is the API key, not a User.
    for obj in objs:
        obj._history_user = actor
    if objs:
        QuarantinedEvent.history.bulk_history_create(objs, update=True)


def quarantine_mark_replayable(
    *, external_customer_id: str | None = None, meter_code: str | None = None, actor=None
) -> list[int]:
    """Mark pending events whose account exists and whose meter exists and is active.

    Narrowed to one account or one meter when given. Returns the ids marked, oldest first.
    """
    pending = QuarantinedEvent.objects.filter(status=QuarantinedEvent.Status.PENDING)
    if external_customer_id is not None:
        pending = pending.filter(external_customer_id=external_customer_id)
    if meter_code is not None:
        pending = pending.filter(meter_code=meter_code)
    ids = list(
        pending.filter(
            Exists(Account.objects.filter(external_id=OuterRef("external_customer_id"))),
            Exists(Meter.objects.filter(code=OuterRef("meter_code"), active=True)),
        )
        .order_by("id")
        .values_list("id", flat=True)
    )
    for start in range(0, len(ids), REPLAY_CHUNK):
        chunk = ids[start : start + REPLAY_CHUNK]
        QuarantinedEvent.objects.filter(id__in=chunk).update(
            status=QuarantinedEvent.Status.REPLAYABLE
        )
        _history(
            list(QuarantinedEvent.objects.filter(id__in=chunk).defer("payload", "properties")),
            actor,
        )
    return ids


def quarantine_schedule_replay(*, ids: list[int], actor=None) -> int:
    """Queue a task that replays up to AUTO_REPLAY_LIMIT of `ids` once the current transaction
    commits; return how many were queued. The replay (up to 10,000 events) runs in a worker, not
    in the request that created the account or meter."""
    from metering.tasks import quarantine_replay_queued

    batch = ids[:AUTO_REPLAY_LIMIT]
    if batch:
        # robust: the account or meter is committed whatever happens here; a replay that could
        # not be queued leaves the events replayable for the admin action and is logged.
        actor_id = getattr(actor, "pk", None)
        transaction.on_commit(
            lambda: quarantine_replay_queued.delay(ids=batch, actor_id=actor_id), robust=True
        )
    return len(batch)


def quarantine_replay(*, ids: list[int] | None = None, actor=None) -> dict[str, int]:
    """Re-ingest quarantined events; return counts per outcome.

    With `ids`, those events (pending, replayable or failed); without, every pending or
    replayable event whose account and meter now exist. Outcome keys: `replayed` (now stored:
    `accepted` + `duplicate`), `conflict`, `rejected` (both mark the event failed),
    `pending` (still unknown), `already_replayed` (ids given that were replayed before).
    """
    counts: Counter[str] = Counter()
    if ids is not None:
        ids = sorted(set(ids))
        counts["already_replayed"] = QuarantinedEvent.objects.filter(
            id__in=ids, status=QuarantinedEvent.Status.REPLAYED
        ).count()
        statuses = [
            QuarantinedEvent.Status.PENDING,
            QuarantinedEvent.Status.REPLAYABLE,
            QuarantinedEvent.Status.FAILED,
        ]
    else:
        statuses = [QuarantinedEvent.Status.PENDING, QuarantinedEvent.Status.REPLAYABLE]
    after = 0
    while True:
        with transaction.atomic():
            claimed = ingest_sql.quarantined_claim(
                after=after, statuses=[str(s) for s in statuses], ids=ids, limit=REPLAY_CHUNK
            )
            if not claimed:
                break
            after = claimed[-1][0]
            _replay_chunk(claimed, counts, actor)
    counts["replayed"] = counts[ACCEPTED] + counts[DUPLICATE]
    return {key: value for key, value in counts.items() if value or key == "replayed"}


def _replay_chunk(claimed: Iterable[tuple], counts: Counter, actor) -> None:
    now = timezone.now()
    claimed = list(claimed)
    results: list[ItemResult | None] = [None] * len(claimed)
    parsed: list[ParsedEvent] = []
    for position, (_qid, payload_text, received_at, _status) in enumerate(claimed):
        payload = exact_json.loads(payload_text)
        fmt = "cloudevents" if "specversion" in payload else "lago"
        outcome = parse_item(position, payload, fmt, IngestLimits(received_at))
        if isinstance(outcome, list):
            results[position] = ItemResult(position, None, REJECTED, outcome)
            continue
        outcome.received_at = received_at
        parsed.append(outcome)
    store_parsed(parsed, results, received_at=now, late_before=late_cutoff(now), quarantine=False)

    rows = QuarantinedEvent.objects.defer("payload", "properties").in_bulk(
        [qid for qid, *_ in claimed]
    )
    changed = []
    for (qid, *_), result in zip(claimed, results, strict=True):
        assert result is not None
        row = rows[qid]
        counts[result.status if result.status != "quarantined" else "pending"] += 1
        if result.status in (ACCEPTED, DUPLICATE):
            row.status = QuarantinedEvent.Status.REPLAYED
            row.replay_result = result.status
            row.event_id = result.event_id
            row.replayed_at = now
        elif result.status in (CONFLICT, REJECTED):
            row.status = QuarantinedEvent.Status.FAILED
            row.replay_result = result.errors[0]["code"] if result.errors else result.status
            row.event_id = result.event_id
            row.replayed_at = now
        elif row.status != QuarantinedEvent.Status.PENDING:
            row.status = QuarantinedEvent.Status.PENDING
        else:
            continue
        changed.append(row)
    if changed:
        QuarantinedEvent.objects.bulk_update(changed, _UPDATED_FIELDS)
        _history(changed, actor)
