"""Money: currencies' minor units, the one rounding rule, and formatting.

Amounts are computed exactly as `Decimal` (see `billing.pricing`) and converted to integer minor
units exactly once per invoice line by `to_minor_units`.

Rounding rule: ROUND_HALF_UP, i.e. to the nearest minor unit with ties away from zero
("commercial rounding"): USD 0.125 -> 13 cents, USD 0.1249999 -> 12 cents, USD -0.125 -> -13
cents. It is the rule a customer checking an invoice on a calculator expects. It is applied
once per line, never to unit prices, tiers or partial
sums, so a line's amount is the exact amount rounded once and an invoice total is the sum of its
rounded lines.

Unknown currency codes raise `UnknownCurrency` (a ValueError); see metering.currencies.

No floats: every entry point rejects `float` with a TypeError rather than converting it.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from metering.currencies import CURRENCY_MINOR_UNITS, currency_minor_unit

ROUNDING = ROUND_HALF_UP

# The full ISO 4217 table lives in metering (accounts are validated against it there); an
# unknown code is refused here too, never given a default of 2 decimals.
CURRENCY_EXPONENTS = CURRENCY_MINOR_UNITS

# Symbols only where they are unambiguous to a reader; everything else shows its ISO code.
CURRENCY_SYMBOLS: dict[str, str] = {
    "USD": "$",
    "EUR": "€",
    "GBP": "£",
    "JPY": "¥",
    "KRW": "₩",
    "INR": "₹",
}

# Wide enough for 38-digit quantities times 30-digit prices; rounding happens only where we say.
_WIDE = decimal.Context(prec=200, rounding=ROUNDING)


def _check_currency(currency: str) -> str:
    """The code in upper case; UnknownCurrency (a ValueError) unless it is in ISO 4217."""
    currency_minor_unit(currency)
    return currency.upper()


def _check_decimal(value: Decimal | int, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{what} must be a Decimal or int, got {type(value).__name__}.")
    value = Decimal(value)
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, got {value}.")
    return value


def _check_minor(value: int, what: str = "Minor units") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}.")
    return value


def currency_exponent(currency: str) -> int:
    """Number of decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3, CLF 4).

    Raises UnknownCurrency (a ValueError) for a code that is not in ISO 4217."""
    return currency_minor_unit(currency)


def to_minor_units(amount: Decimal | int, currency: str) -> int:
    """Round an exact amount once (ROUND_HALF_UP) to an integer number of minor units."""
    amount = _check_decimal(amount, "Amount")
    exponent = currency_exponent(currency)
    with decimal.localcontext(_WIDE):
        return int(amount.scaleb(exponent).quantize(Decimal(1), rounding=ROUNDING))


def from_minor_units(minor: int, currency: str) -> Decimal:
    """The exact Decimal amount of `minor` minor units (1234 USD -> Decimal('12.34'))."""
    with decimal.localcontext(_WIDE):
        return Decimal(_check_minor(minor)).scaleb(-currency_exponent(currency))


def _group(digits: str) -> str:
    """'1234567' -> '1,234,567'."""
    return f"{int(digits):,}"


def _render(amount: Decimal, currency: str, places: int) -> str:
    currency = _check_currency(currency)
    sign = "-" if amount < 0 else ""
    text = f"{abs(amount):f}"
    whole, _, frac = text.partition(".")
    frac = frac.ljust(places, "0")
    number = _group(whole) + (f".{frac}" if frac else "")
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{currency} {number}"


def format_money(minor: int, currency: str) -> str:
    """Minor units for people: 123456 USD -> '$1,234.56', 1235 KWD -> 'KWD 1.235'."""
    exponent = currency_exponent(currency)
    return _render(from_minor_units(minor, currency), currency, exponent)


def format_amount(amount: Decimal | int, currency: str) -> str:
    """An exact (unrounded) amount for people, e.g. a unit price or a tier subtotal.

    Shows at least the currency's minor-unit places and every further significant digit:
    Decimal('0.0004') USD -> '$0.0004', Decimal('2') USD -> '$2.00'.
    """
    amount = _check_decimal(amount, "Amount")
    exponent = currency_exponent(currency)
    with decimal.localcontext(_WIDE):
        normal = amount.normalize()
        places = max(exponent, -normal.as_tuple().exponent) if normal else exponent
        return _render(amount.quantize(Decimal(1).scaleb(-places)), currency, places)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of one currency."""

    minor: int
    currency: str

    def __post_init__(self) -> None:
        _check_minor(self.minor)
        object.__setattr__(self, "currency", _check_currency(self.currency))

    @classmethod
    def from_decimal(cls, amount: Decimal | int, currency: str) -> Money:
        """Round an exact amount once (ROUND_HALF_UP) into Money."""
        return cls(to_minor_units(amount, currency), currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @property
    def amount(self) -> Decimal:
        return from_minor_units(self.minor, self.currency)

    def _same_currency(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"Cannot combine Money with {type(other).__name__}.")
        if other.currency != self.currency:
            raise ValueError(f"Cannot combine {self.currency} with {other.currency}.")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.minor + other.minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.minor - other.minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.minor, self.currency)

    def __str__(self) -> str:
        return format_money(self.minor, self.currency)
