"""Storing parsed events: account and meter lookups, quarantine, insert with ON CONFLICT DO
NOTHING, duplicate/conflict comparison, deadlock retries, and the batch result
(`events_ingest`, the one write path)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from django.db import OperationalError, transaction
from django.utils import timezone
from psycopg import errors as pg_errors

from metering import exact_json, ingest_sql
from metering.models import QuarantinedEvent
from metering.services.ingest.common import (
    ACCEPTED,
    CONFLICT,
    DEADLOCK_RETRIES,
    DUPLICATE,
    QUARANTINED,
    REJECTED,
    BatchResult,
    Format,
    ItemResult,
    ParsedEvent,
    _error,
)
from metering.services.ingest.parse import IngestLimits, _payload, _transaction_id_of, parse_item
from metering.services.ingest.values import _MeterInfo, _row_for, late_cutoff

# --- storing ----------------------------------------------------------------------------------


def _lookups(events: list[ParsedEvent]) -> tuple[dict[str, int], dict[str, _MeterInfo]]:
    """One query for the batch's accounts and one for its meters (a per-request cache)."""
    accounts = ingest_sql.accounts_by_external_id(
        external_ids=list({event.external_customer_id for event in events})
    )
    meters = {
        code: _MeterInfo(*info)
        for code, info in ingest_sql.meters_by_code(
            codes=list({event.meter_code for event in events})
        ).items()
    }
    return accounts, meters


def _quarantine_reason(account_id: int | None, meter: _MeterInfo | None) -> str | None:
    if account_id is None:
        return QuarantinedEvent.Reason.UNKNOWN_ACCOUNT
    if meter is None:
        return QuarantinedEvent.Reason.UNKNOWN_METER
    if not meter.active:
        return QuarantinedEvent.Reason.INACTIVE_METER
    return None


def _store(
    parsed: list[ParsedEvent],
    results: list[ItemResult | None],
    *,
    received_at: datetime,
    late_before: datetime,
    quarantine: bool,
    new_only: bool = False,
) -> None:
    """Resolve, insert and classify `parsed`, filling `results` at each event's index.

    With quarantine=False (replays), events that still cannot be attributed are reported
    `quarantined` without writing anything. With new_only=True, a key that is stored already
    raises psycopg's UniqueViolation instead (ingest_sql.INSERT_NEW_EVENTS).
    """
    accounts, meters = _lookups(parsed)

    rows: dict[tuple[int, str, str], tuple[tuple, ParsedEvent]] = {}
    repeats: list[tuple[tuple[int, str, str], ParsedEvent]] = []
    held: list[tuple[ParsedEvent, str, int | None]] = []  # (event, reason, account id)
    for event in parsed:
        account_id = accounts.get(event.external_customer_id)
        meter = meters.get(event.meter_code)
        reason = _quarantine_reason(account_id, meter)
        if reason is not None:
            held.append((event, reason, account_id))
            continue
        row = _row_for(event, account_id, meter, late_before)
        if isinstance(row, list):
            results[event.index] = ItemResult(event.index, event.transaction_id, REJECTED, row)
            continue
        key = (account_id, event.source, event.transaction_id)
        if key in rows:
            repeats.append((key, event))
        else:
            rows[key] = (row, event)

    ordered = sorted(rows)  # one lock order for every batch: no deadlocks between batches
    # Stored events are append-only: what the probe found need not be read again below.
    probed = ingest_sql.events_existing(keys=_probe_keys(ordered)) if new_only and ordered else {}
    if probed:
        new_only = False  # a batch sent again: skip the insert that would fail on its first row
    inserted = ingest_sql.events_insert(
        rows=[rows[key][0] for key in ordered], received_at=received_at, new_only=new_only
    )

    # Keys that already existed: stored before, by a concurrent request, or held events whose
    # account exists (a retry of a stored event must not be quarantined because its meter was
    # deactivated since).
    to_check = [key for key in ordered if key not in inserted]
    to_check += [key for key, _ in repeats if key not in inserted]
    to_check += [
        (account_id, event.source, event.transaction_id)
        for event, _reason, account_id in held
        if account_id is not None
    ]
    existing = probed | ingest_sql.events_existing(
        keys=[key for key in dict.fromkeys(to_check) if key not in probed]
    )

    for key in ordered:
        row, event = rows[key]
        if key in inserted:
            results[event.index] = ItemResult(
                event.index, event.transaction_id, ACCEPTED, event_id=inserted[key]
            )
        else:
            results[event.index] = _compare(event, existing.get(key))
    for key, event in repeats:
        if key in inserted:
            first = rows[key][1]
            same = first.content_hash == event.content_hash
            results[event.index] = _same_or_conflict(event, same, inserted[key])
        else:
            results[event.index] = _compare(event, existing.get(key))

    to_quarantine: list[tuple[ParsedEvent, str]] = []
    for event, reason, account_id in held:
        found = existing.get((account_id, event.source, event.transaction_id))
        if found is not None:
            results[event.index] = _compare(event, found)
        elif quarantine:
            to_quarantine.append((event, reason))
        else:
            results[event.index] = ItemResult(event.index, event.transaction_id, QUARANTINED)
    if to_quarantine:
        _quarantine(to_quarantine, results, received_at=received_at)


def _probe_keys(ordered: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The first, middle and last key: if a batch was stored before, these were too."""
    return list(dict.fromkeys((ordered[0], ordered[len(ordered) // 2], ordered[-1])))


def _compare(event: ParsedEvent, found: tuple[int, bytes] | None) -> ItemResult:
    if found is None:
        # The conflicting row vanished (its transaction rolled back after blocking ours):
        # retrying the batch will insert it.
        raise _RetryBatch
    return _same_or_conflict(event, found[1] == event.content_hash, found[0])


def _same_or_conflict(event: ParsedEvent, same: bool, event_id: int) -> ItemResult:
    if same:
        return ItemResult(event.index, event.transaction_id, DUPLICATE, event_id=event_id)
    return ItemResult(
        event.index,
        event.transaction_id,
        CONFLICT,
        [
            _error(
                "transaction_id",
                "conflict",
                "An event with this transaction_id was already received with different content.",
            )
        ],
        event_id=event_id,
    )


def _quarantine(
    held: list[tuple[ParsedEvent, str]], results: list, *, received_at: datetime
) -> None:
    rows: dict[tuple[str, str, str], tuple[dict, ParsedEvent]] = {}
    repeats = []
    for event, reason in held:
        key = (event.external_customer_id, event.source, event.transaction_id)
        if key in rows:
            repeats.append((key, event))
            continue
        rows[key] = (
            {
                "c": event.external_customer_id,
                "m": event.meter_code,
                "t": event.transaction_id,
                "s": event.source,
                "o": event.occurred_at,
                "p": orjson.Fragment(event.properties_json),
                "h": event.content_hash.hex(),
                "j": orjson.Fragment(exact_json.dumps(_payload(event))),
                "r": reason,
            },
            event,
        )
    ordered = sorted(rows)
    inserted = ingest_sql.quarantined_insert(
        rows=[rows[key][0] for key in ordered], received_at=received_at
    )
    to_check = [key for key in ordered if key not in inserted]
    to_check += [key for key, _ in repeats if key not in inserted]
    existing = ingest_sql.quarantined_existing(keys=list(dict.fromkeys(to_check)))

    def outcome(event: ParsedEvent, stored_hash: bytes | None) -> ItemResult:
        if stored_hash is None:
            raise _RetryBatch
        if stored_hash == event.content_hash:
            return ItemResult(event.index, event.transaction_id, DUPLICATE)
        return _same_or_conflict(event, False, None)

    for key in ordered:
        event = rows[key][1]
        if key in inserted:
            results[event.index] = ItemResult(event.index, event.transaction_id, QUARANTINED)
        else:
            results[event.index] = outcome(event, (existing.get(key) or (0, None))[1])
    for key, event in repeats:
        stored = (
            rows[key][1].content_hash if key in inserted else (existing.get(key) or (0, None))[1]
        )
        results[event.index] = outcome(event, stored)
    if inserted:
        # History for the quarantine rows (staff act on them); written in bulk, like the rows.
        # No acting user: the API key is not a user (and must not be taken from the request).
        rows_for_history = list(
            QuarantinedEvent.objects.filter(id__in=inserted.values()).defer("payload", "properties")
        )
        for row in rows_for_history:
            row._history_user = None
        QuarantinedEvent.history.bulk_history_create(rows_for_history, default_date=received_at)


class _RetryBatch(Exception):
    """The batch must be run again in a fresh transaction (deadlock or a vanished conflict)."""


_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def _is_retryable(exc: Exception) -> bool:
    # The hot path uses psycopg cursors directly (psycopg errors); the ORM wraps them.
    return isinstance(exc, _RETRYABLE) or isinstance(exc.__cause__, _RETRYABLE)


def store_parsed(
    parsed: list[ParsedEvent],
    results: list[ItemResult | None],
    *,
    received_at: datetime,
    late_before: datetime,
    quarantine: bool = True,
) -> None:
    """`_store` in its own transaction (a savepoint when nested), retried on deadlock.

    The first run inserts as if every event were new, the usual case and the cheaper insert
    (a batch sent again is caught before that by `_probe_keys`). If an event is stored
    already, the run rolls back and the batch runs again, skipping the stored ones and
    comparing them: a batch that mixes new and stored events pays for its lookups, rows and
    part of its insert twice, never for its parsing.
    """
    if not parsed:
        return
    new_only = True
    attempt = 0
    while True:
        try:
            with transaction.atomic():
                _store(
                    parsed,
                    results,
                    received_at=received_at,
                    late_before=late_before,
                    quarantine=quarantine,
                    new_only=new_only,
                )
            return
        except pg_errors.UniqueViolation:
            if not new_only:
                raise
            new_only = False
            continue
        except _RetryBatch:
            if attempt == DEADLOCK_RETRIES:
                raise
        except (OperationalError, pg_errors.OperationalError) as exc:
            if not _is_retryable(exc) or attempt == DEADLOCK_RETRIES:
                raise
        attempt += 1


def events_ingest(*, items: list[dict], fmt: Format, now: datetime | None = None) -> BatchResult:
    """Ingest a batch of Lago or CloudEvents items; one result per item, in order.

    Items should come from `metering.exact_json.loads` so that numbers are Decimal, not float.
    All writes of the batch commit together; a bad item only rejects itself.
    """
    if fmt not in ("lago", "cloudevents"):
        raise ValueError(f"Unknown event format {fmt!r}.")
    received_at = (now or timezone.now()).astimezone(UTC)
    limits = IngestLimits(received_at)
    results: list[ItemResult | None] = [None] * len(items)
    parsed: list[ParsedEvent] = []
    for index, item in enumerate(items):
        outcome = parse_item(index, item, fmt, limits)
        if isinstance(outcome, list):
            results[index] = ItemResult(index, _transaction_id_of(item, fmt), REJECTED, outcome)
        else:
            parsed.append(outcome)
    store_parsed(parsed, results, received_at=received_at, late_before=late_cutoff(received_at))
    return BatchResult(results=results)  # type: ignore[arg-type]
