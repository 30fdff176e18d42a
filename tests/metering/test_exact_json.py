"""metering.exact_json.loads keeps every number exact and refuses what storage cannot hold, on
both sides of its fast path for numbers written without an exponent."""

from decimal import Decimal

import pytest

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
