"""Usage event ingestion: every item is accepted, a duplicate, quarantined, a conflict or rejected.

The one write path for usage events (API, `ingest_file`, quarantine replays). Guarantees:

- Exactly once. Identity is (account, source, transaction_id), enforced by the unique constraint
  `usage_event_identity` through `INSERT ... ON CONFLICT DO NOTHING` (metering.ingest_sql). A key
  that is already stored is a `duplicate` when its content hash matches (nothing written, a
  success) and a `conflict` otherwise (nothing written, an error). This holds across requests,
  within one batch (the first occurrence wins) and under concurrency (PostgreSQL makes the second
  inserter wait for the first and then skip).
- Nothing silently dropped. An event for an account or meter that does not exist (or a meter
  that is inactive) is stored in the quarantine with its reason and reported `quarantined`; it
  is replayed once the account and meter exist (metering.services.quarantine).
- Exact values. Numbers arrive as Decimal (metering.exact_json) and are written as decimal text.

Validation is plain Python, not DRF serializers: per item it costs a few microseconds, which is
what lets a 1,000-event batch keep up with COPY (see bench/ingest.py).

Time rules: `timestamp` is Unix seconds (int, decimal or numeric string) or an RFC 3339 time with
an offset; more than INGEST_MAX_FUTURE_SECONDS ahead of reception is rejected. An event is
*late* when it occurred before the start of the previous UTC day, relative to when it is written
(a daily or hourly rollup of a day before yesterday is then being changed after the fact);
late events are accepted and flagged `is_late`. A Lago event without `timestamp` takes the time
of reception, as Lago does, and its content hash leaves the timestamp out so that a retry is a
duplicate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson
from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone
from psycopg import errors as pg_errors

from metering import exact_json, ingest_sql
from metering.content_hash import canonical_content_hash
from metering.exact_json import EXACT
from metering.models import QuarantinedEvent

Format = Literal["lago", "cloudevents"]
Status = Literal["accepted", "duplicate", "quarantined", "conflict", "rejected"]

ACCEPTED: Status = "accepted"
DUPLICATE: Status = "duplicate"
QUARANTINED: Status = "quarantined"
CONFLICT: Status = "conflict"
REJECTED: Status = "rejected"

MAX_TEXT_LENGTH = 255
# numeric(38, 12): 26 digits before the point, 12 after.
MAX_INTEGER_DIGITS = 26
MAX_DECIMAL_PLACES = 12
DEADLOCK_RETRIES = 3

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC_STRING = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_ONE = orjson.Fragment(b"1")
_DECIMAL_PLACES = Decimal(1).scaleb(-MAX_DECIMAL_PLACES)


def _error(field_name: str | None, code: str, message: str) -> dict[str, Any]:
    return {"field": field_name, "code": code, "message": message}


@dataclass(slots=True)
class ItemResult:
    index: int
    transaction_id: str | None
    status: Status
    errors: list[dict[str, Any]] = field(default_factory=list)
    event_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "transaction_id": self.transaction_id,
            "status": self.status,
            "errors": self.errors,
        }


@dataclass
class BatchResult:
    results: list[ItemResult]
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    conflicts: int = 0
    rejected: int = 0

    def __post_init__(self) -> None:
        counts = dict.fromkeys((ACCEPTED, DUPLICATE, QUARANTINED, CONFLICT, REJECTED), 0)
        for result in self.results:
            counts[result.status] += 1
        self.accepted = counts[ACCEPTED]
        self.duplicates = counts[DUPLICATE]
        self.quarantined = counts[QUARANTINED]
        self.conflicts = counts[CONFLICT]
        self.rejected = counts[REJECTED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "conflicts": self.conflicts,
            "rejected": self.rejected,
            "results": [r.as_dict() for r in self.results],
        }


@dataclass(slots=True)
class ParsedEvent:
    """An item that passed the checks that need no account or meter."""

    index: int
    transaction_id: str
    source: str
    external_customer_id: str
    meter_code: str
    occurred_at: datetime
    properties: dict[str, Any]
    properties_json: bytes
    content_hash: bytes
    # The timestamp as sent (None when absent), kept for the quarantine's copy of the payload.
    raw_time: Any
    # Set for replays only: when the event was first received (else the batch's time).
    received_at: datetime | None = None


# --- parsing: plain Python, per item --------------------------------------------------------


def _text(item: dict, key: str, errors: list, *, label: str | None = None) -> str:
    value = item.get(key)
    name = label or key
    if value is None:
        errors.append(_error(name, "missing_field", f"{name} is required."))
        return ""
    if not isinstance(value, str):
        errors.append(_error(name, "invalid_type", f"{name} must be a string."))
        return ""
    if not value or value.isspace():
        errors.append(_error(name, "blank", f"{name} must not be blank."))
        return ""
    if len(value) > MAX_TEXT_LENGTH:
        errors.append(
            _error(name, "too_long", f"{name} must be at most {MAX_TEXT_LENGTH} characters.")
        )
        return ""
    if not _storable_text(value):
        errors.append(
            _error(name, "invalid_characters", f"{name} contains characters that cannot be stored.")
        )
        return ""
    return value


def _storable_text(value: str) -> bool:
    """PostgreSQL text cannot hold NUL; UTF-8 cannot encode lone surrogates."""
    if value.isascii():
        return "\x00" not in value
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unix_seconds(value: Decimal) -> datetime:
    # Beyond 10^12 seconds is past year 9999; refuse before any arithmetic on a huge number.
    if not value.is_finite() or (value and value.adjusted() > 12):
        raise ValueError("out of range")
    return _EPOCH + timedelta(microseconds=math.floor(value.scaleb(6, EXACT)))


def parse_timestamp(raw: Any, *, numeric: bool = True) -> datetime | None:
    """A UTC datetime from Unix seconds or RFC 3339 (with an offset), else None."""
    try:
        if isinstance(raw, bool):
            return None
        if isinstance(raw, int):
            if not numeric:
                return None
            return _EPOCH + timedelta(seconds=raw)
        if isinstance(raw, Decimal | float):
            if not numeric:
                return None
            return _unix_seconds(Decimal(repr(raw)) if isinstance(raw, float) else raw)
        if isinstance(raw, str):
            if numeric and _NUMERIC_STRING.match(raw):
                return _unix_seconds(Decimal(raw))
            if len(raw) > 64:
                return None
            parsed = datetime.fromisoformat(raw)
            if parsed.tzinfo is None:
                return None  # RFC 3339 requires an offset; guessing one would shift usage.
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError, ArithmeticError):
        return None
    return None


def _properties(raw: Any, name: str, errors: list, max_bytes: int) -> tuple[dict[str, Any], bytes]:
    if raw is None:
        return {}, b"{}"
    if not isinstance(raw, dict):
        errors.append(_error(name, "invalid_type", f"{name} must be a JSON object."))
        return {}, b""
    try:
        # Stored in canonical form (keys sorted, numbers in one exact spelling): the value of
        # every number is kept digit for digit, and the same bytes feed the content hash.
        serialised = exact_json.canonical_dumps(raw)
    except exact_json.JSONError:
        errors.append(_error(name, "invalid_properties", f"{name} cannot be stored as JSON."))
        return {}, b""
    if len(serialised) > max_bytes:
        errors.append(
            _error(
                name,
                "properties_too_large",
                f"{name} is {len(serialised)} bytes as JSON; the limit is {max_bytes}.",
            )
        )
        return {}, b""
    if exact_json.has_escaped_nul(serialised):
        errors.append(
            _error(name, "invalid_properties", f"{name} contains a NUL character (\\u0000).")
        )
        return {}, b""
    return raw, serialised


class IngestLimits:
    __slots__ = ("latest_allowed", "max_properties", "received_at")

    def __init__(self, received_at: datetime):
        self.received_at = received_at
        self.latest_allowed = received_at + timedelta(seconds=settings.INGEST_MAX_FUTURE_SECONDS)
        self.max_properties = settings.INGEST_MAX_PROPERTIES_BYTES


def _occurred_at(raw: Any, name: str, errors: list, limits: IngestLimits, *, numeric: bool):
    occurred = parse_timestamp(raw, numeric=numeric)
    if occurred is None:
        hint = "Unix seconds or an RFC 3339 time" if numeric else "an RFC 3339 time"
        errors.append(_error(name, "invalid_timestamp", f"{name} must be {hint} with an offset."))
    elif occurred > limits.latest_allowed:
        errors.append(
            _error(
                name,
                "timestamp_in_future",
                f"{name} is more than {settings.INGEST_MAX_FUTURE_SECONDS} seconds in the future.",
            )
        )
        return None
    return occurred


def _parsed(
    index, transaction_id, source, customer, code, occurred, properties, properties_json,
    raw_time, limits: IngestLimits,
) -> ParsedEvent:  # fmt: skip
    """A valid item, either format. An event without a time takes the reception time; its hash
    keeps the missing time, so a retry of it is a duplicate, not a conflict."""
    return ParsedEvent(
        index,
        transaction_id,
        source,
        customer,
        code,
        occurred or limits.received_at,
        properties,
        properties_json,
        canonical_content_hash(
            meter_code=code, occurred_at=occurred, canonical_properties=properties_json
        ),
        raw_time,
    )


def _parse_lago(index: int, item: dict, limits: IngestLimits) -> ParsedEvent | list[dict]:
    errors: list[dict] = []
    transaction_id = _text(item, "transaction_id", errors)
    customer = _text(item, "external_customer_id", errors)
    code = _text(item, "code", errors)
    raw_time = item.get("timestamp")
    occurred = (
        None
        if raw_time is None
        else _occurred_at(raw_time, "timestamp", errors, limits, numeric=True)
    )
    properties, properties_json = _properties(
        item.get("properties"), "properties", errors, limits.max_properties
    )
    if errors:
        return errors
    return _parsed(
        index, transaction_id, "", customer, code, occurred, properties, properties_json,
        raw_time, limits,
    )  # fmt: skip


def _parse_cloudevent(index: int, item: dict, limits: IngestLimits) -> ParsedEvent | list[dict]:
    errors: list[dict] = []
    version = item.get("specversion")
    if version is None:
        errors.append(_error("specversion", "missing_field", "specversion is required."))
    elif version != "1.0":
        errors.append(
            _error("specversion", "invalid_specversion", "Only CloudEvents 1.0 is supported.")
        )
    transaction_id = _text(item, "id", errors)
    source = _text(item, "source", errors)
    code = _text(item, "type", errors)
    customer = _text(item, "subject", errors)
    raw_time = item.get("time")
    occurred = (
        None if raw_time is None else _occurred_at(raw_time, "time", errors, limits, numeric=False)
    )
    if "data_base64" in item:
        errors.append(
            _error("data_base64", "unsupported_data", "Send data as a JSON object, not base64.")
        )
    properties, properties_json = _properties(
        item.get("data"), "data", errors, limits.max_properties
    )
    if errors:
        return errors
    return _parsed(
        index, transaction_id, source, customer, code, occurred, properties, properties_json,
        raw_time, limits,
    )  # fmt: skip


def _payload(event: ParsedEvent) -> dict[str, Any]:
    """The item as received (its known fields), which a replay will ingest again.

    CloudEvents always have a non-empty source; Lago events never do.
    """
    if event.source:
        payload = {
            "specversion": "1.0",
            "id": event.transaction_id,
            "source": event.source,
            "type": event.meter_code,
            "subject": event.external_customer_id,
            "data": event.properties,
        }
        if event.raw_time is not None:
            payload["time"] = event.raw_time
        return payload
    payload = {
        "transaction_id": event.transaction_id,
        "external_customer_id": event.external_customer_id,
        "code": event.meter_code,
        "properties": event.properties,
    }
    if event.raw_time is not None:
        payload["timestamp"] = event.raw_time
    return payload


def _transaction_id_of(item: Any, fmt: Format) -> str | None:
    if not isinstance(item, dict):
        return None
    value = item.get("id" if fmt == "cloudevents" else "transaction_id")
    # Echoed in the answer, so only when it is text that can be encoded.
    if isinstance(value, str) and len(value) <= MAX_TEXT_LENGTH and _storable_text(value):
        return value
    return None


def parse_item(
    index: int, item: Any, fmt: Format, limits: IngestLimits
) -> ParsedEvent | list[dict]:
    if not isinstance(item, dict):
        return [_error(None, "invalid_event", "Each event must be a JSON object.")]
    if fmt == "cloudevents":
        return _parse_cloudevent(index, item, limits)
    return _parse_lago(index, item, limits)


# --- values: need the meter -----------------------------------------------------------------


def _numeric_value(raw: Any) -> Decimal | tuple[str, str]:
    if raw is None:
        return ("missing_value", "is required by this meter")
    if isinstance(raw, bool):
        return ("invalid_value", "must be a number, not a boolean")
    try:
        if isinstance(raw, int):
            value = Decimal(raw)
        elif isinstance(raw, Decimal):
            value = raw
        elif isinstance(raw, float):
            value = Decimal(repr(raw))
        elif isinstance(raw, str) and _NUMERIC_STRING.match(raw):
            value = Decimal(raw)
        else:
            return ("invalid_value", "must be a number or a numeric string")
    except (InvalidOperation, ValueError):
        return ("invalid_value", "must be a number or a numeric string")
    if not value.is_finite():
        return ("invalid_value", "must be a finite number")
    if value:
        if value.adjusted() >= MAX_INTEGER_DIGITS:
            return ("value_out_of_range", f"must be below 10^{MAX_INTEGER_DIGITS}")
        if value.quantize(_DECIMAL_PLACES, context=EXACT) != value:
            return ("value_too_precise", f"must have at most {MAX_DECIMAL_PLACES} decimal places")
    return value


def _unique_value(raw: Any) -> str | tuple[str, str]:
    if raw is None or raw == "":
        return ("missing_value", "is required by this meter")
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, str):
        text = raw
    elif isinstance(raw, int | Decimal):
        text = exact_json.canonical_number(raw)
    elif isinstance(raw, float):
        text = exact_json.canonical_number(Decimal(repr(raw)))
    else:
        return ("invalid_value", "must be a string, number or boolean")
    if len(text) > MAX_TEXT_LENGTH:
        return ("value_too_long", f"must be at most {MAX_TEXT_LENGTH} characters")
    return text


@dataclass(slots=True)
class _MeterInfo:
    id: int
    aggregation: str
    value_property: str
    active: bool


def _row_for(event: ParsedEvent, account_id: int, meter: _MeterInfo, late_before: datetime):
    """The insert row for an event, or an error list when its value does not fit the meter."""
    aggregation = meter.aggregation
    value: Any = None
    unique = ""
    if aggregation == "count":
        value = _ONE
    else:
        prop = meter.value_property
        raw = event.properties.get(prop)
        if aggregation == "unique_count":
            parsed = _unique_value(raw)
            if isinstance(parsed, tuple):
                return [_error(f"properties.{prop}", parsed[0], f"{prop} {parsed[1]}.")]
            unique = parsed
        else:
            parsed_value = _numeric_value(raw)
            if isinstance(parsed_value, tuple):
                return [_error(f"properties.{prop}", parsed_value[0], f"{prop} {parsed_value[1]}.")]
            value = orjson.Fragment(str(parsed_value).encode())
    return {
        "a": account_id,
        "m": meter.id,
        "t": event.transaction_id,
        "s": event.source,
        "o": event.occurred_at,
        "v": value,
        "u": unique,
        "p": orjson.Fragment(event.properties_json),
        "h": event.content_hash.hex(),
        "l": event.occurred_at < late_before,
        "r": event.received_at,
    }


def late_cutoff(now: datetime) -> datetime:
    """Events that occurred before this instant are late: the start of the previous UTC day."""
    return datetime.combine(now.astimezone(UTC).date() - timedelta(days=1), time(0), tzinfo=UTC)


# --- storing ----------------------------------------------------------------------------------


def _lookups(events: Iterable[ParsedEvent]) -> tuple[dict[str, int], dict[str, _MeterInfo]]:
    """One query for the batch's accounts and one for its meters (a per-request cache)."""
    customers: set[str] = set()
    codes: set[str] = set()
    for event in events:
        customers.add(event.external_customer_id)
        codes.add(event.meter_code)
    accounts = ingest_sql.accounts_by_external_id(external_ids=list(customers))
    meters = {
        code: _MeterInfo(*info)
        for code, info in ingest_sql.meters_by_code(codes=list(codes)).items()
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
) -> None:
    """Resolve, insert and classify `parsed`, filling `results` at each event's index.

    With quarantine=False (replays), events that still cannot be attributed are reported
    `quarantined` without writing anything.
    """
    accounts, meters = _lookups(parsed)

    rows: dict[tuple[int, str, str], tuple[dict, ParsedEvent]] = {}
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
    inserted = ingest_sql.events_insert(
        rows=[rows[key][0] for key in ordered], received_at=received_at
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
    existing = ingest_sql.events_existing(keys=list(dict.fromkeys(to_check)))

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
    """`_store` in its own transaction (a savepoint when nested), retried on deadlock."""
    if not parsed:
        return
    for attempt in range(DEADLOCK_RETRIES + 1):
        try:
            with transaction.atomic():
                _store(
                    parsed,
                    results,
                    received_at=received_at,
                    late_before=late_before,
                    quarantine=quarantine,
                )
            return
        except _RetryBatch:
            if attempt == DEADLOCK_RETRIES:
                raise
        except (OperationalError, pg_errors.OperationalError) as exc:
            if not _is_retryable(exc) or attempt == DEADLOCK_RETRIES:
                raise


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
