"""Decimals as text: the one implementation, used by metering and billing alike.

Usage values and amounts are exact decimals with up to 38 digits; `Decimal.normalize()` in the
default context would round them to 28, so the text is made from the exact digits instead.
"""

from __future__ import annotations

from decimal import Decimal


def decimal_text(value: Decimal) -> str:
    """Plain digits, exact, no exponent, no trailing zeros: Decimal('1.500') -> '1.5',
    Decimal('1E+2') -> '100', Decimal('-0.00') -> '0'."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text
