"""ISO 4217 currencies and the decimal places of their minor unit.

The table is ISO 4217's list one (current currencies and funds) with the minor unit of each code.
Codes without a minor unit in the standard (gold XAU, silver XAG, SDR XDR, the test code XTS,
"no currency" XXX, ...) are left out on purpose: nothing can be billed in them. Kept here, in
the lowest app that needs it, because accounts (metering) are validated against it and billing
rounds with it (billing.money); imports flow metering <- billing.

A code not in the table is refused everywhere: at account upsert (`invalid_currency`), in the
admin forms, and by billing's money functions (ValueError). Nothing falls back to 2 decimals.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError

# Zero decimals: the minor unit is the unit.
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
# Three decimals (fils, baisa, millime, dirham).
_THREE = "BHD IQD JOD KWD LYD OMR TND"
# Four decimals: the Chilean and Uruguayan units of account.
_FOUR = "CLF UYW"
# Two decimals: every other current code.
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
)

CURRENCY_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(_TWO.split(), 2),
    **dict.fromkeys(_ZERO.split(), 0),
    **dict.fromkeys(_THREE.split(), 3),
    **dict.fromkeys(_FOUR.split(), 4),
}


class UnknownCurrency(ValueError):
    """Not a current ISO 4217 code with a minor unit."""


def currency_minor_unit(code: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3, CLF 4).

    Case-insensitive; raises UnknownCurrency for anything not in ISO 4217's current list.
    """
    if not isinstance(code, str) or code.upper() not in CURRENCY_MINOR_UNITS:
        raise UnknownCurrency(f"{code!r} is not a current ISO 4217 currency code.")
    return CURRENCY_MINOR_UNITS[code.upper()]


def is_currency(code: str) -> bool:
    """Whether `code` is exactly (upper case) a current ISO 4217 code."""
    return isinstance(code, str) and code in CURRENCY_MINOR_UNITS


def validate_currency(value: str) -> None:
    """For forms and services: an upper-case, current ISO 4217 code, else `invalid_currency`."""
    if not is_currency(value):
        raise ValidationError(
            "%(value)s is not a current ISO 4217 currency code (for example USD, EUR, JPY).",
            code="invalid_currency",
            params={"value": value},
        )
