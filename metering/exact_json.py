"""JSON that never rounds a number.

Usage values are exact decimals, so a body like `{"value": 0.1}` or
`{"value": 12345678901234567.123456789012}` must reach the database digit for digit. orjson and
the stdlib both parse JSON numbers with a fraction or exponent into binary floats, which would
round them; here they become `Decimal`, built from the literal text. Integers stay `int`, which
is exact. msgspec decodes (in C, with `float_hook` getting each number's literal text); whatever
it refuses is decoded again by stdlib `json` with `parse_float`, which decides and words the
error, or accepts what msgspec is stricter about (a lone UTF-16 surrogate escape, which then
rejects only the item that holds it, not the whole body).

Serialising goes through orjson (fast, C) with a `default` that emits each `Decimal` as a raw
JSON number (`orjson.Fragment`), so nothing is converted through float on the way out either.

`NaN`, `Infinity` and `-Infinity` are not JSON (RFC 8259) and PostgreSQL's jsonb refuses them,
so parsing rejects them instead of letting them reach a column; so it does numbers beyond
PostgreSQL numeric's range (1e-20000), which no column can hold either.
"""

from __future__ import annotations

import decimal
import json
import re
from decimal import Decimal
from typing import Any

import msgspec
import orjson

# Numbers are written out in full ("1e50" becomes 51 digits, see canonical_number), so their
# magnitude is bounded: a few bytes of input must not turn into megabytes. 10^±100 is far
# beyond any usage quantity and well inside PostgreSQL's numeric.
_MAX_ADJUSTED_EXPONENT = 100
_MIN_ADJUSTED_EXPONENT = -100
# What PostgreSQL's numeric (and so jsonb) can hold at all: up to 131072 digits before the
# decimal point and 16383 after it. A number beyond that can reach no column, like NaN.
_PG_MAX_ADJUSTED_EXPONENT = 131071
_PG_MIN_EXPONENT = -16383
# orjson only serialises integers that fit in 64 bits.
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
# A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


# Arithmetic on parsed numbers must never round: the default context keeps only 28 digits.
EXACT = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)


class JSONError(ValueError):
    """The input is not JSON we can take exactly (malformed, non-finite, too deep)."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _storable_decimal(text: str) -> Decimal:
    # Fast path: without an exponent, a literal of at most 16383 characters has at most that
    # many digits on either side of the point, so it is inside numeric's range.
    if len(text) <= -_PG_MIN_EXPONENT and "e" not in text and "E" not in text:
        return Decimal(text)
    value = Decimal(text)
    if value and (
        value.adjusted() > _PG_MAX_ADJUSTED_EXPONENT or value.as_tuple().exponent < _PG_MIN_EXPONENT
    ):
        raise ValueError(f"the number {text[:24]} is beyond what can be stored")
    return value


_DECODER = json.JSONDecoder(parse_float=_storable_decimal, parse_constant=_reject_constant)
# About 1.5 times as fast on an ingestion batch; the same value for every text both accept
# (tests/metering/test_exact_json.py compares them).
_FAST_DECODER = msgspec.json.Decoder(float_hook=_storable_decimal)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text (UTF-8 if bytes), numbers with a fraction or exponent as Decimal."""
    try:
        return _FAST_DECODER.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        pass
    return _loads_checked(data)


def _loads_checked(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return _DECODER.decode(text)
    except RecursionError as exc:
        raise JSONError("The JSON is nested too deeply.") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise JSONError(str(exc)) from exc


def _check_decimal(value: Decimal) -> None:
    if not value.is_finite():
        raise TypeError("non-finite number")
    if value and not _MIN_ADJUSTED_EXPONENT <= value.adjusted() <= _MAX_ADJUSTED_EXPONENT:
        raise TypeError("number out of range")


def _default(obj):
    if isinstance(obj, Decimal):
        # Written as parsed, exponent and all ("1E-117" stays 8 bytes), so only what storage can
        # hold bounds it; loads() refused anything beyond that. (canonical_dumps writes numbers
        # out in full and keeps the tighter bound.)
        if not obj.is_finite():
            raise TypeError("non-finite number")
        return orjson.Fragment(str(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def canonical_number(value: Decimal | int) -> str:
    """One spelling per number: 1, 1.0 and 1E+0 are all "1"; 1.50 is "1.5"."""
    if isinstance(value, int):
        return str(value)
    if not value:
        return "0"
    return format(value.normalize(EXACT), "f")


def _canonical_default(obj):
    if isinstance(obj, Decimal):
        _check_decimal(obj)
        return orjson.Fragment(canonical_number(obj))
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _big_ints_as_decimals(obj):
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int) and not _INT64_MIN <= obj <= _UINT64_MAX:
        return Decimal(obj)
    if isinstance(obj, dict):
        return {k: _big_ints_as_decimals(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_big_ints_as_decimals(v) for v in obj]
    return obj


def _dumps(obj: Any, default, option: int) -> bytes:
    try:
        return orjson.dumps(obj, default=default, option=option)
    except TypeError:
        # Rare: an integer beyond 64 bits. Retry with those as Decimal, which we emit exactly;
        # anything else that cannot be serialised fails again below.
        pass
    try:
        return orjson.dumps(_big_ints_as_decimals(obj), default=default, option=option)
    except TypeError as exc:
        raise JSONError(str(exc)) from exc


def dumps(obj: Any) -> bytes:
    """Serialise exactly, keeping each number as it was written (1.10 stays 1.10)."""
    return _dumps(obj, _default, 0)


def canonical_dumps(obj: Any) -> bytes:
    """Serialise for comparison: keys sorted and numbers in one spelling (see canonical_number).

    Floats (which exact parsing never produces) are written by orjson in their shortest form.
    """
    return _dumps(obj, _canonical_default, orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def has_escaped_nul(serialised: bytes) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000; find it in serialised JSON."""
    return b"\\u0000" in serialised and _ESCAPED_NUL.search(serialised) is not None
