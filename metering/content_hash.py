"""The content fingerprint that tells a retry (same content) from a conflict (different content).

Two deliveries of one event are the same event when their meter code, timestamp and properties
are equal. Timestamps are compared as UTC instants at microsecond precision, properties as
canonical JSON (sorted keys), so `{"a":1,"b":2}` and `{"b":2,"a":1}` are the same content.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import orjson


def event_content_hash(*, meter_code: str, occurred_at: datetime, properties: dict) -> bytes:
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    canonical = orjson.dumps(
        {
            "code": meter_code,
            "timestamp": occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "properties": properties,
        },
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )
    return hashlib.sha256(canonical).digest()
