"""parse_timestamp turns Unix seconds into the exact instant, floored to the microsecond, and
refuses what no datetime can hold (its epoch arithmetic splits days, seconds and microseconds
itself, for speed, so it is checked against timedelta's own normalisation here)."""

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering.services.ingest import parse_timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "1764459876.123",
        "1764459876.1234567",  # below the microsecond: floored
        "-0.0000001",  # floored to the microsecond before the epoch
        "-1.5",
        "-86400.000001",
        "86399.999999",
        "253402300799.999999",  # the last microsecond of year 9999
        "-62135596800",  # 0001-01-01T00:00:00Z
        "1E+9",
    ],
)
def test_decimal_seconds_give_the_instant_floored_to_the_microsecond(text):
    value = Decimal(text)
    expected = EPOCH + timedelta(microseconds=math.floor(value * 1_000_000))

    assert parse_timestamp(value) == expected
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("seconds", [0, 1, 86_399, 86_400, -1, -86_401, 1_764_459_876])
def test_integer_seconds_give_the_exact_instant(seconds):
    assert parse_timestamp(seconds) == EPOCH + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "raw", [253402300800, -62135596801, Decimal("253402300800"), 10**30, Decimal("1E+12")]
)
def test_seconds_beyond_what_a_datetime_holds_are_refused(raw):
    assert parse_timestamp(raw) is None
