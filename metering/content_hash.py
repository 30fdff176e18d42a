"""The content fingerprint that tells a retry (same content) from a conflict (different content).

Two deliveries of one event are the same event when their meter code, timestamp and properties
are equal. Timestamps are compared as instants at microsecond precision (microseconds since the
Unix epoch, so the zone they were written in does not matter), properties as canonical JSON
(sorted keys, one spelling per number), so `{"a":1,"b":2.0}` and `{"b":2,"a":1}` are the same
content. Numbers are exact decimals (see metering.exact_json), never floats.

An event sent without a timestamp (Lago then uses the time of reception) hashes with a null
timestamp, so a retry of it is recognised as the same event although it arrives later.

The hashed text is the canonical JSON of {"code", "properties", "timestamp"}.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import orjson

from metering import exact_json

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def event_content_hash(*, meter_code: str, occurred_at: datetime | None, properties: dict) -> bytes:
    return canonical_content_hash(
        meter_code=meter_code,
        occurred_at=occurred_at,
        canonical_properties=exact_json.canonical_dumps(properties),
    )


def canonical_content_hash(
    *, meter_code: str, occurred_at: datetime | None, canonical_properties: bytes
) -> bytes:
    """The same hash from properties already serialised by `exact_json.canonical_dumps`."""
    if occurred_at is None:
        timestamp = b"null"
    elif occurred_at.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    else:
        timestamp = b"%d" % ((occurred_at - _EPOCH) // _MICROSECOND)
    return hashlib.sha256(
        b'{"code":%s,"properties":%s,"timestamp":%s}'
        % (orjson.dumps(meter_code), canonical_properties, timestamp)
    ).digest()


# b'{"code":<code>,"properties":' per meter code, for the ingest fast path: a batch repeats a few
# codes, and building the prefix (orjson.dumps and a format) is half of the hash's cost there.
# Codes come from clients (unknown ones are quarantined), so the cache is bounded.
_PREFIXES: dict[str, bytes] = {}
_MAX_PREFIXES = 1024


def _prefix(meter_code: str) -> bytes:
    prefix = _PREFIXES.get(meter_code)
    if prefix is None:
        if len(_PREFIXES) >= _MAX_PREFIXES:
            _PREFIXES.clear()
        prefix = _PREFIXES[meter_code] = b'{"code":%s,"properties":' % orjson.dumps(meter_code)
    return prefix


def canonical_content_hash_at(
    *, meter_code: str, epoch_microseconds: int, canonical_properties: bytes
) -> bytes:
    """The same hash for an event whose time is known as microseconds since the Unix epoch
    (the ingest fast path has them at hand, so no datetime arithmetic is repeated)."""
    return hashlib.sha256(
        b'%s%s,"timestamp":%d}' % (_prefix(meter_code), canonical_properties, epoch_microseconds)
    ).digest()
