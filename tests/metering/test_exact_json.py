"""metering.exact_json.loads keeps every number exact and refuses what storage cannot hold, on
both sides of its fast path for numbers written without an exponent."""

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering import exact_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1", Decimal("0.1")),
        ("1.10", Decimal("1.10")),
        ("-0.0", Decimal("-0.0")),
        ("12345678901234567.123456789012", Decimal("12345678901234567.123456789012")),
        ("1764459876.123", Decimal("1764459876.123")),
        ("1e50", Decimal("1E+50")),
        ("1.5E-3", Decimal("0.0015")),
        ("2e+2", Decimal("2E+2")),
    ],
)
def test_numbers_with_a_fraction_or_exponent_parse_to_the_exact_decimal(text, expected):
    value = exact_json.loads(f'{{"v": {text}}}')["v"]

    assert isinstance(value, Decimal)
    assert value == expected
    assert str(value) == str(Decimal(text))  # same digits and exponent, not just equal


def test_large_integers_stay_exact_ints():
    value = exact_json.loads('{"v": 123456789012345678901234567890}')["v"]

    assert value == 123456789012345678901234567890
    assert isinstance(value, int)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_constants_are_refused(text):
    with pytest.raises(exact_json.JSONError):
        exact_json.loads(f'{{"v": {text}}}')


def test_a_fraction_of_16383_digits_is_kept_and_one_more_is_refused():
    # 16383 decimal places is PostgreSQL numeric's limit; the literal without an exponent is
    # 16385 characters long, past the fast path's length bound, so the full check decides.
    kept = "0." + "0" * 16382 + "1"
    assert exact_json.loads(f"[{kept}]")[0] == Decimal(kept)

    with pytest.raises(exact_json.JSONError):
        exact_json.loads("[0." + "0" * 16383 + "1]")


def test_short_fractions_within_the_fast_path_bound_are_exact():
    text = "1." + "5" * 16000  # 16002 characters, no exponent: fast path
    assert exact_json.loads(f"[{text}]")[0] == Decimal(text)


@pytest.mark.parametrize("text", ["1e-16384", "1e131072", "1E-20000"])
def test_exponents_beyond_what_storage_holds_are_refused(text):
    with pytest.raises(exact_json.JSONError):
        exact_json.loads(f"[{text}]")


# --- the two decoders: msgspec first, stdlib json for what msgspec refuses ---------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def _as_json(value) -> str:
    """JSON text for a value whose Decimal strings are written as bare numbers."""
    if isinstance(value, str) and value and value[0] in "-0123456789" and _is_number(value):
        return value
    if isinstance(value, list):
        return "[" + ",".join(_as_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_as_json(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _is_number(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _both(text: str | bytes):
    """(value or error class) from loads and from the stdlib decoder alone."""
    outcomes = []
    for decode in (exact_json.loads, exact_json._loads_checked):
        try:
            outcomes.append(("value", decode(text)))
        except exact_json.JSONError:
            outcomes.append(("error", None))
    return outcomes


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_loads_agrees_with_the_stdlib_decoder_on_any_document(value):
    text = _as_json(value)
    (kind, fast), (kind_checked, checked) = _both(text.encode())

    assert kind == kind_checked
    assert repr(fast) == repr(checked)  # Decimal digits and exponents, int vs Decimal, key order


@pytest.mark.parametrize(
    "text",
    [
        b"01", b"[1,]", b'{"a":1,}', b".5", b"1.", b"+1", b"'a'", b'"a\tb"', b'"a\x01"',
        b"1 2", b"[1]x", b"", b" ", b"[-]", b"\xef\xbb\xbf1", b'"\xed\xa0\x80"', b'"\xc0\x80"',
        b'{"a":1}\x00', b"[1e-20000]", b"1" * 5000, b"NaN", b"[Infinity]", b"[" * 5000,
    ],
)  # fmt: skip
def test_what_either_decoder_refuses_is_refused(text):
    assert _both(text) == [("error", None), ("error", None)]


def test_a_lone_surrogate_escape_is_kept_for_the_item_to_be_rejected_not_the_body():
    # msgspec refuses the whole text; stdlib json keeps the string, and ingestion then rejects
    # only the item that holds it (tests/metering/test_api_events.py).
    assert exact_json.loads(b'{"events": [{"id": "\\ud800"}, {"id": 1.50}]}') == {
        "events": [{"id": "\ud800"}, {"id": Decimal("1.50")}]
    }
