"""Money: minor units per currency, one rounding rule (half up), formatting, no floats."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    Money,
    currency_exponent,
    format_amount,
    format_money,
    from_minor_units,
    to_minor_units,
)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("JOD", 3),
        ("IQD", 3),
        ("LYD", 3),
        ("OMR", 3),
        ("TND", 3),
        ("VND", 0),
        ("CLP", 0),
        ("XOF", 0),
        ("XAF", 0),
        ("ISK", 0),
        ("UGX", 0),
        ("CLF", 4),
        ("usd", 2),
    ],
)
def test_currency_exponent_follows_iso_4217(currency, exponent):
    assert currency_exponent(currency) == exponent


@pytest.mark.parametrize("currency", ["ABC", "XYZ", "XAU", "XXX", "US", "USDX", ""])
def test_money_functions_refuse_a_code_that_is_not_in_iso_4217(currency):
    with pytest.raises(ValueError, match="ISO 4217"):
        currency_exponent(currency)
    with pytest.raises(ValueError, match="ISO 4217"):
        to_minor_units(Decimal("1.5"), currency)
    with pytest.raises(ValueError, match="ISO 4217"):
        format_money(150, currency)
    with pytest.raises(ValueError, match="ISO 4217"):
        Money(150, currency)


def test_yen_has_no_minor_places_and_dinar_three():
    assert to_minor_units(Decimal("1234.5"), "JPY") == 1235
    assert format_money(1235, "JPY") == "¥1,235"
    assert to_minor_units(Decimal("1.2345"), "KWD") == 1235
    assert format_money(1235, "KWD") == "KWD 1.235"
    assert format_money(12345, "CLF") == "CLF 1.2345"


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("0.125", "USD", 13),  # a half rounds up
        ("0.1249999999", "USD", 12),
        ("0.135", "USD", 14),
        ("0.145", "USD", 15),  # banker's rounding would give 14
        ("-0.125", "USD", -13),  # halves round away from zero
        ("4938.2712", "USD", 493827),
        ("0.5", "JPY", 1),
        ("1.5", "JPY", 2),
        ("1.2345", "KWD", 1235),
        ("1.2344999", "KWD", 1234),
        ("0", "USD", 0),
        ("12", "USD", 1200),
    ],
)
def test_to_minor_units_rounds_half_up_once(amount, currency, minor):
    result = to_minor_units(Decimal(amount), currency)
    assert result == minor
    assert type(result) is int


def test_to_minor_units_refuses_floats():
    with pytest.raises(TypeError):
        to_minor_units(0.1, "USD")  # type: ignore[arg-type]


def test_to_minor_units_refuses_infinity_and_nan():
    with pytest.raises(ValueError):
        to_minor_units(Decimal("Infinity"), "USD")
    with pytest.raises(ValueError):
        to_minor_units(Decimal("NaN"), "USD")


def test_to_minor_units_keeps_huge_amounts_exact():
    # 40 significant digits: the default Decimal context (28 digits) would round this.
    amount = Decimal("123456789012345678901234567890.1234567891")
    assert to_minor_units(amount, "USD") == 12345678901234567890123456789012


@given(
    numerator=st.integers(min_value=-(10**20), max_value=10**20),
    places=st.integers(min_value=0, max_value=12),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_to_minor_units_is_the_nearest_minor_unit_with_halves_away_from_zero(
    numerator, places, currency
):
    amount = Decimal(numerator).scaleb(-places)
    minor = to_minor_units(amount, currency)
    exact = Fraction(amount) * 10 ** currency_exponent(currency)
    distance = exact - minor
    assert abs(distance) <= Fraction(1, 2)
    if abs(distance) == Fraction(1, 2):
        # A tie went away from zero.
        assert abs(minor) > abs(exact)


@given(minor=st.integers(min_value=-(10**15), max_value=10**15))
def test_from_minor_units_round_trips(minor):
    for currency in ("USD", "JPY", "KWD"):
        assert to_minor_units(from_minor_units(minor, currency), currency) == minor


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (123456, "USD", "$1,234.56"),
        (5, "USD", "$0.05"),
        (-100, "USD", "-$1.00"),
        (1235, "JPY", "¥1,235"),
        (1235, "KWD", "KWD 1.235"),
        (99, "EUR", "€0.99"),
        (100000, "CHF", "CHF 1,000.00"),
    ],
)
def test_format_money_shows_minor_units_in_the_currencys_format(minor, currency, text):
    assert format_money(minor, currency) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0.0004", "$0.0004"),
        ("2", "$2.00"),
        ("4938.2712", "$4,938.2712"),
        ("1.50", "$1.50"),
        ("0.000000000001", "$0.000000000001"),
        ("1E+3", "$1,000.00"),
    ],
)
def test_format_amount_shows_every_significant_digit(amount, text):
    assert format_amount(Decimal(amount), "USD") == text


def test_money_adds_in_one_currency_only():
    assert Money(150, "USD") + Money(250, "usd") == Money(400, "USD")
    assert str(Money(400, "USD") - Money(1000, "USD")) == "-$6.00"
    with pytest.raises(ValueError):
        Money(1, "USD") + Money(1, "EUR")


def test_money_holds_integer_minor_units_only():
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(Decimal("1"), "USD")  # type: ignore[arg-type]
    assert Money.from_decimal(Decimal("0.005"), "USD") == Money(1, "USD")
    assert Money(1234, "KWD").amount == Decimal("1.234")
