"""What the ingest steps share: formats, item statuses, limits, the per-item and per-batch
results, and a parsed event."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson

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
