"""What the SDK-based adapters (Orb, Metronome, Lago) share for reading answers: times as
RFC 3339 UTC and exact JSON numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal


def iso_utc(at: datetime) -> str:
    """`2026-11-30T04:15:00Z`: whole seconds, UTC."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text) -> datetime | None:
    """An RFC 3339 time (`Z` or an offset; a string or what an SDK model holds) as an aware
    UTC datetime; None for empty."""
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)


def sdk_body(raw) -> dict:
    """A raw SDK response parsed with decimals for every number with a fraction."""
    return json.loads(raw.http_response.content or b"{}", parse_float=Decimal)
