"""The Lago fast path (metering.services.ingest.parse._parse_lago_fast) accepts only what the
full path accepts, with the same parsed event and content hash, and leaves everything else,
errors included, to the full path."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.content_hash import canonical_content_hash
from metering.services.ingest.parse import (
    IngestLimits,
    _parse_lago_checked,
    _parse_lago_fast,
    parse_item,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = IngestLimits(NOW)
BASE = {"transaction_id": "tx-1", "external_customer_id": "acme", "code": "calls"}


@pytest.mark.parametrize(
    "extra",
    [
        {"timestamp": 1764504000},
        {"timestamp": Decimal("1764504000.123456789")},
        {"timestamp": Decimal("0")},
        {"timestamp": Decimal("-0.0")},
        {"timestamp": 0, "properties": None},
        {"timestamp": 1764504000, "properties": {"b": Decimal("2.50"), "a": [1, {"z": "x"}]}},
        {"timestamp": Decimal("1E+5"), "properties": {}},
    ],
)
def test_common_items_take_the_fast_path_with_the_full_paths_result(extra):
    item = {**BASE, **extra}

    fast = _parse_lago_fast(0, item, LIMITS)

    assert fast is not None
    assert fast == _parse_lago_checked(0, item, LIMITS)
    assert fast.content_hash == canonical_content_hash(
        meter_code="calls", occurred_at=fast.occurred_at, canonical_properties=fast.properties_json
    )


@pytest.mark.parametrize(
    "item",
    [
        {**BASE},  # no timestamp: hashed with a null time
        {**BASE, "timestamp": "1764504000"},
        {**BASE, "timestamp": "2026-11-30T12:00:00Z"},
        {**BASE, "timestamp": 1.5},
        {**BASE, "timestamp": -1},
        {**BASE, "timestamp": Decimal("-0.5")},
        {**BASE, "timestamp": True},
        {**BASE, "timestamp": 253402300800},
        {**BASE, "timestamp": Decimal("Infinity")},
        {**BASE, "timestamp": int((NOW + timedelta(seconds=301)).timestamp())},
        {**BASE, "timestamp": 0, "transaction_id": "mo:mine"},
        {**BASE, "timestamp": 0, "transaction_id": "é"},
        {**BASE, "timestamp": 0, "transaction_id": " "},
        {**BASE, "timestamp": 0, "transaction_id": "a\x00b"},
        {**BASE, "timestamp": 0, "transaction_id": "x" * 256},
        {**BASE, "timestamp": 0, "code": 5},
        {**BASE, "timestamp": 0, "properties": []},
        {**BASE, "timestamp": 0, "properties": {"n": "a\x00"}},
        {**BASE, "timestamp": 0, "properties": {"big": "x" * 9000}},
    ],
)
def test_anything_else_takes_the_full_path(item):
    assert _parse_lago_fast(0, item, LIMITS) is None
    # and the full path, through the public entry point, decides as before
    assert parse_item(0, item, "lago", LIMITS) == _parse_lago_checked(0, item, LIMITS)


def test_the_hash_prefix_cache_stays_bounded_and_exact_for_any_code():
    """The fast path caches each code's hash prefix; clients choose codes, so the cache is
    bounded, and a code that needs escaping hashes as the full path does."""
    from metering import content_hash

    codes = [f'code-{i}-"ü\\' for i in range(content_hash._MAX_PREFIXES + 50)]
    for code in codes:
        expected = canonical_content_hash(
            meter_code=code,
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            canonical_properties=b"{}",
        )
        micros = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
        assert (
            content_hash.canonical_content_hash_at(
                meter_code=code, epoch_microseconds=micros, canonical_properties=b"{}"
            )
            == expected
        )
    assert len(content_hash._PREFIXES) <= content_hash._MAX_PREFIXES
