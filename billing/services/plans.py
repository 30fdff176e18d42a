"""Plans and their prices."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.db import transaction

from billing.models import Plan, Price
from billing.pricing import PriceModel, PricingError, Tier, tiers_from_json, tiers_to_json
from metering.models import Meter


def _decimal(field: str, value: Decimal | int | str) -> Decimal:
    # A float would already have lost digits; refuse it rather than guess what was meant.
    if isinstance(value, float):
        raise TypeError(f"{field} must be a Decimal, int or string, not a float.")
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValidationError({field: "Give a number."})
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValidationError({field: f"{value!r} is not a number."}) from None
    if not number.is_finite():
        raise ValidationError({field: "Give a finite number."})
    return number


@transaction.atomic
def plan_create(
    *,
    code: str,
    name: str,
    currency: str,
    flat_fee_minor: int = 0,
    minimum_commitment_minor: int = 0,
    billing_interval: str = Plan.BillingInterval.MONTH,
    active: bool = True,
    actor=None,
) -> Plan:
    """Create a plan. Fees are integer minor units (cents for USD)."""
    for field, value in (
        ("flat_fee_minor", flat_fee_minor),
        ("minimum_commitment_minor", minimum_commitment_minor),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError({field: "Give an integer number of minor units."})
    plan = Plan(
        code=code,
        name=name,
        currency=currency.upper(),
        flat_fee_minor=flat_fee_minor,
        minimum_commitment_minor=minimum_commitment_minor,
        billing_interval=billing_interval,
        active=active,
    )
    plan.full_clean()
    plan._history_user = actor
    plan.save()
    return plan


@transaction.atomic
def price_add(
    *,
    plan: Plan,
    meter: Meter,
    model: str | PriceModel,
    unit_price: Decimal | int | str = Decimal(0),
    package_size: int | None = None,
    package_price: Decimal | int | str = Decimal(0),
    included_units: Decimal | int | str = Decimal(0),
    flat_fee: Decimal | int | str = Decimal(0),
    tiers: Sequence[Tier | dict] | None = None,
    name: str = "",
    provider_price_id: str = "",
    actor=None,
) -> Price:
    """Add a meter's price to a plan, validated by the pricing engine's rules.

    Tiers may be `billing.pricing.Tier`s or dicts {"up_to", "unit_price", "flat_fee"} with
    Decimal, int or string numbers. Raises ValidationError (field-keyed) on an invalid price.
    """
    try:
        tier_json = tiers_to_json(tiers_from_json(list(tiers or [])))
    except PricingError as exc:
        raise ValidationError({"tiers": exc.message}) from None
    price = Price(
        plan=plan,
        meter=meter,
        name=name,
        model=str(model),
        unit_price=_decimal("unit_price", unit_price),
        package_size=package_size,
        package_price=_decimal("package_price", package_price),
        included_units=_decimal("included_units", included_units),
        flat_fee=_decimal("flat_fee", flat_fee),
        tiers=tier_json,
        provider_price_id=provider_price_id,
    )
    price.full_clean()
    price._history_user = actor
    price.save()
    return price
