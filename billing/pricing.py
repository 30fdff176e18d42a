"""The pricing engine: pure functions from prices and quantities to exact amounts.

No Django ORM here, so the engine is tested with hypothesis without a database. `Price.to_spec()`
(billing.models) turns a stored price into a `PriceSpec`.

Rules, in the order they apply to one line (one price, one meter, one period):

1. Included units are subtracted first, never below zero: billed = max(0, quantity - included).
2. The price model charges the billed units, exactly (Decimal arithmetic in a context that raises
   instead of rounding):
   - per_unit: billed * unit_price.
   - graduated: each tier charges the units that fall in it at its own unit price; a tier's flat
     fee is charged once any billed unit falls in the tier.
   - volume: every billed unit at the unit price of the tier the total reaches, plus that tier's
     flat fee. Tier bounds are inclusive (`up_to` units still belong to the tier). Volume tiers
     must not make more usage cheaper (see `PriceSpec`).
   - package: ceil(billed / package_size) * package_price; a started package counts in full.
   Zero billed units cost nothing under every model.
3. The line's own fixed fee (`flat_fee`, optional) is added whatever the usage.
4. `price_invoice` rounds each line once to the currency's minor unit (billing.money,
   ROUND_HALF_UP), adds the plan's fixed fee and, if the total is below the plan's minimum
   commitment, a true-up line for the difference. The total is the sum of the rounded lines.

Tier bounds: tier i covers billed units above the previous tier's `up_to` (0 for the first) up
to and including its own `up_to`; the last tier has `up_to=None` (no upper bound).
"""

from __future__ import annotations

import decimal
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from billing.money import (
    Money,
    currency_exponent,
    format_amount,
    format_money,
    from_minor_units,
    to_minor_units,
)
from metering.decimals import decimal_text

MAX_PRICE_PLACES = 12

# Exact arithmetic: an operation that would have to round raises decimal.Inexact instead, so an
# amount is either exact or an error, never silently rounded. 200 digits hold 38-digit
# quantities times 30-digit prices with room to spare.
EXACT = decimal.Context(
    prec=200,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

ZERO = Decimal(0)


class PricingError(ValueError):
    """A price that cannot be used, or a quantity it cannot price. `field` names the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class PriceModel(StrEnum):
    PER_UNIT = "per_unit"
    GRADUATED = "graduated"
    VOLUME = "volume"
    PACKAGE = "package"


class LineKind(StrEnum):
    PLAN_FEE = "plan_fee"
    USAGE = "usage"
    MINIMUM_COMMITMENT = "minimum_commitment"
    # Projected invoices only: credits issued on the period (adjustments), never priced here.
    CREDIT = "credit"


def _number(
    value: object,
    *,
    field: str,
    what: str,
    places: int | None = MAX_PRICE_PLACES,
    allow_none: bool = False,
) -> Decimal | None:
    """Check a non-negative exact number (Decimal, int or numeric string); floats are refused."""
    if value is None:
        if allow_none:
            return None
        raise PricingError(f"{what} is required.", field=field)
    if isinstance(value, bool) or isinstance(value, float):
        raise PricingError(
            f"{what} must be an exact decimal (a Decimal or a string such as '0.0004'), "
            f"not {type(value).__name__}.",
            field=field,
        )
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except decimal.InvalidOperation:
            raise PricingError(f"{what} must be a number, got {value!r}.", field=field) from None
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise PricingError(f"{what} must be a number, got {type(value).__name__}.", field=field)
    if not value.is_finite():
        raise PricingError(f"{what} must be finite, got {value}.", field=field)
    if value < 0:
        raise PricingError(f"{what} must not be negative, got {value}.", field=field)
    if places is not None and value and value.normalize(EXACT).as_tuple().exponent < -places:
        raise PricingError(f"{what} has more than {places} decimal places: {value}.", field=field)
    return value


def format_quantity(value: Decimal) -> str:
    """A quantity for people: Decimal('12345678') -> '12,345,678', '1234.500' -> '1,234.5'."""
    whole, _, frac = decimal_text(abs(value)).partition(".")
    sign = "-" if value < 0 else ""
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: units up to and including `up_to` (None: no upper bound)."""

    up_to: Decimal | None
    unit_price: Decimal
    flat_fee: Decimal = ZERO

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "up_to",
            _number(self.up_to, field="tiers", what="A tier's up_to", places=12, allow_none=True),
        )
        object.__setattr__(
            self, "unit_price", _number(self.unit_price, field="tiers", what="A tier's unit price")
        )
        object.__setattr__(
            self, "flat_fee", _number(self.flat_fee, field="tiers", what="A tier's flat fee")
        )


def tiers_from_json(data: object) -> tuple[Tier, ...]:
    """Parse stored tiers: [{"up_to": "1000" | null, "unit_price": "0.001", "flat_fee": "0"}].

    Numbers may be strings, ints or Decimals (billing.models decodes JSON numbers as Decimal);
    floats are refused.
    """
    if data is None:
        return ()
    if not isinstance(data, list | tuple):
        raise PricingError("Tiers must be a list of {up_to, unit_price, flat_fee}.", field="tiers")
    tiers = []
    for position, item in enumerate(data, start=1):
        if isinstance(item, Tier):
            tiers.append(item)
            continue
        if not isinstance(item, dict):
            raise PricingError(f"Tier {position} must be an object.", field="tiers")
        unknown = sorted(set(item) - {"up_to", "unit_price", "flat_fee"})
        if unknown:
            raise PricingError(f"Tier {position} has unknown keys {unknown}.", field="tiers")
        if "unit_price" not in item:
            raise PricingError(f"Tier {position} needs a unit_price.", field="tiers")
        tiers.append(
            Tier(
                up_to=item.get("up_to"),
                unit_price=item["unit_price"],
                flat_fee=item.get("flat_fee") or ZERO,
            )
        )
    return tuple(tiers)


def tiers_to_json(tiers: Sequence[Tier]) -> list[dict]:
    """Tiers as JSON-safe dicts with decimals as strings, so nothing passes through a float."""
    return [
        {
            "up_to": None if tier.up_to is None else decimal_text(tier.up_to),
            "unit_price": decimal_text(tier.unit_price),
            "flat_fee": decimal_text(tier.flat_fee),
        }
        for tier in tiers
    ]


@dataclass(frozen=True, slots=True)
class PriceSpec:
    """Everything the engine needs to price one meter's usage; mirrors billing.models.Price.

    Fields a model does not use must stay empty (0, None or no tiers), so a price never carries
    a number that silently does nothing. Validation happens here, once, for the engine and for
    the model's clean().
    """

    model: PriceModel
    currency: str
    unit_price: Decimal = ZERO
    package_size: int | None = None
    package_price: Decimal = ZERO
    included_units: Decimal = ZERO
    flat_fee: Decimal = ZERO
    tiers: tuple[Tier, ...] = ()
    # For descriptions: the meter's code, its unit (plural noun, e.g. "API calls") and a name.
    meter_code: str = ""
    unit: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        try:
            model = PriceModel(self.model)
        except ValueError:
            raise PricingError(
                f"Unknown price model {self.model!r}; choose from {[m.value for m in PriceModel]}.",
                field="model",
            ) from None
        object.__setattr__(self, "model", model)
        try:
            object.__setattr__(self, "currency", self.currency.upper())
            currency_exponent(self.currency)
        except (ValueError, AttributeError):
            raise PricingError(
                f"Currency must be a current ISO 4217 code, got {self.currency!r}.",
                field="currency",
            ) from None
        for name, what in (
            ("unit_price", "The unit price"),
            ("package_price", "The package price"),
            ("included_units", "Included units"),
            ("flat_fee", "The line's flat fee"),
        ):
            object.__setattr__(self, name, _number(getattr(self, name), field=name, what=what))
        object.__setattr__(self, "tiers", tiers_from_json(list(self.tiers or ())))
        self._check_fields_for_model()
        if model in (PriceModel.GRADUATED, PriceModel.VOLUME):
            self._check_tiers()
        if model is PriceModel.VOLUME:
            self._check_volume_never_cheaper()

    def _check_fields_for_model(self) -> None:
        model = self.model
        tiered = model in (PriceModel.GRADUATED, PriceModel.VOLUME)
        if model is PriceModel.PACKAGE:
            size = self.package_size
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise PricingError(
                    "A package price needs a package size of at least 1.", field="package_size"
                )
        elif self.package_size is not None:
            raise PricingError("Only package prices have a package size.", field="package_size")
        if model is not PriceModel.PACKAGE and self.package_price:
            raise PricingError("Only package prices have a package price.", field="package_price")
        if model is not PriceModel.PER_UNIT and self.unit_price:
            raise PricingError(
                "Only per-unit prices have a unit price; tiered prices set it per tier.",
                field="unit_price",
            )
        if not tiered and self.tiers:
            raise PricingError("Only graduated and volume prices have tiers.", field="tiers")

    def _check_tiers(self) -> None:
        if not self.tiers:
            raise PricingError("Graduated and volume prices need at least one tier.", field="tiers")
        previous = ZERO
        for position, tier in enumerate(self.tiers, start=1):
            last = position == len(self.tiers)
            if tier.up_to is None and not last:
                raise PricingError(
                    f"Only the last tier may be unbounded (tier {position} has no up_to).",
                    field="tiers",
                )
            if last and tier.up_to is not None:
                raise PricingError(
                    "The last tier must be unbounded (up_to null) so every quantity has a price.",
                    field="tiers",
                )
            if tier.up_to is not None:
                if tier.up_to <= previous:
                    raise PricingError(
                        f"Tier bounds must ascend: tier {position} ends at {tier.up_to}, "
                        f"not above {previous}.",
                        field="tiers",
                    )
                previous = tier.up_to

    def _check_volume_never_cheaper(self) -> None:
        """Volume tiers must not charge less for more usage.

        Within a tier the charge grows with usage, so the charge can only drop where one tier
        ends and the next begins: b units cost b*p1 + f1 at the end of a tier and, just above,
        b*p2 + f2. Any configuration with b*p2 + f2 < b*p1 + f1 is refused; raise the next
        tier's flat fee (the message says by how much) or its unit price.
        """
        with decimal.localcontext(EXACT):
            for position, (tier, following) in enumerate(itertools.pairwise(self.tiers), start=1):
                bound = tier.up_to
                at_end = bound * tier.unit_price + tier.flat_fee
                just_above = bound * following.unit_price + following.flat_fee
                if just_above < at_end:
                    raise PricingError(
                        f"Volume tier {position + 1} would make more usage cheaper: "
                        f"{format_quantity(bound)} units cost "
                        f"{format_amount(at_end, self.currency)} in tier {position} but just above "
                        f"only {format_amount(just_above, self.currency)}. Raise tier "
                        f"{position + 1}'s flat fee by at least "
                        f"{format_amount(at_end - just_above, self.currency)}.",
                        field="tiers",
                    )

    @property
    def unit_label(self) -> str:
        return self.unit or "units"

    @property
    def title(self) -> str:
        return self.name or self.meter_code or "Usage"


@dataclass(frozen=True, slots=True)
class TierLine:
    """The part of a line one tier charged. `from_units` is exclusive, `to_units` inclusive."""

    index: int  # 0-based position in the price's tiers
    from_units: Decimal
    to_units: Decimal | None
    units: Decimal
    unit_price: Decimal
    flat_fee: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class LineAmount:
    """One priced line, exact (not rounded)."""

    spec: PriceSpec
    quantity: Decimal
    included_units: Decimal  # the part of the allowance used: min(quantity, allowance)
    units_billed: Decimal
    usage_amount: Decimal  # what the model charged for the billed units
    flat_fee: Decimal  # the line's own fixed fee
    amount: Decimal  # usage_amount + flat_fee, exact
    tiers: tuple[TierLine, ...]
    packages: int | None  # package model only
    description: tuple[str, ...]


def _tier_range(lower: Decimal, upper: Decimal | None, unit: str) -> str:
    if upper is None:
        return f"above {format_quantity(lower)} {unit}" if lower else f"all {unit}"
    if not lower:
        return f"the first {format_quantity(upper)} {unit}"
    return f"above {format_quantity(lower)} up to {format_quantity(upper)} {unit}"


def _fee_suffix(flat_fee: Decimal, currency: str) -> str:
    return f", plus a flat fee of {format_amount(flat_fee, currency)}" if flat_fee else ""


def price_usage(*, price: PriceSpec, quantity: Decimal) -> LineAmount:
    """Price one meter's usage for one period, exactly, with a plain-language description."""
    quantity = _number(quantity, field="quantity", what="The quantity", places=None)
    spec = price
    unit = spec.unit_label
    cur = spec.currency
    tier_lines: list[TierLine] = []
    packages: int | None = None
    with decimal.localcontext(EXACT):
        included = min(quantity, spec.included_units)
        billed = quantity - included

        if spec.model is PriceModel.PER_UNIT:
            usage_amount = billed * spec.unit_price
        elif spec.model is PriceModel.GRADUATED:
            lower = ZERO
            for index, tier in enumerate(spec.tiers):
                if billed <= lower:
                    break
                top = billed if tier.up_to is None else min(billed, tier.up_to)
                units = top - lower
                tier_lines.append(
                    TierLine(
                        index=index,
                        from_units=lower,
                        to_units=tier.up_to,
                        units=units,
                        unit_price=tier.unit_price,
                        flat_fee=tier.flat_fee,
                        amount=units * tier.unit_price + tier.flat_fee,
                    )
                )
                if tier.up_to is None:
                    break
                lower = tier.up_to
            usage_amount = sum((line.amount for line in tier_lines), ZERO)
        elif spec.model is PriceModel.VOLUME:
            usage_amount = ZERO
            lower = ZERO
            if billed > 0:
                for index, tier in enumerate(spec.tiers):
                    if tier.up_to is None or billed <= tier.up_to:
                        usage_amount = billed * tier.unit_price + tier.flat_fee
                        tier_lines.append(
                            TierLine(
                                index=index,
                                from_units=lower,
                                to_units=tier.up_to,
                                units=billed,
                                unit_price=tier.unit_price,
                                flat_fee=tier.flat_fee,
                                amount=usage_amount,
                            )
                        )
                        break
                    lower = tier.up_to
        else:  # package
            whole, rest = divmod(billed, Decimal(spec.package_size))
            packages = int(whole) + (1 if rest else 0)
            usage_amount = packages * spec.package_price

        amount = usage_amount + spec.flat_fee

    # The description, in the order a support agent would read it to a customer.
    lines: list[str] = []
    if spec.included_units and included:
        if billed:
            lines.append(
                f"{format_quantity(quantity)} {unit} used; the first "
                f"{format_quantity(spec.included_units)} are included, so "
                f"{format_quantity(billed)} are billed."
            )
        else:
            lines.append(
                f"{format_quantity(quantity)} {unit} used, all within the "
                f"{format_quantity(spec.included_units)} included; no usage charge."
            )
    else:
        lines.append(f"{format_quantity(quantity)} {unit} used.")
    if spec.model is PriceModel.PER_UNIT and billed:
        lines.append(
            f"{format_quantity(billed)} {unit} at {format_amount(spec.unit_price, cur)} each: "
            f"{format_amount(usage_amount, cur)}."
        )
    elif spec.model is PriceModel.GRADUATED:
        for line in tier_lines:
            lines.append(
                f"Tier {line.index + 1} ({_tier_range(line.from_units, line.to_units, unit)}): "
                f"{format_quantity(line.units)} at {format_amount(line.unit_price, cur)} each"
                f"{_fee_suffix(line.flat_fee, cur)} = {format_amount(line.amount, cur)}."
            )
    elif spec.model is PriceModel.VOLUME:
        for line in tier_lines:
            lines.append(
                f"All {format_quantity(line.units)} {unit} are priced at tier {line.index + 1} "
                f"({_tier_range(line.from_units, line.to_units, unit)}): "
                f"{format_amount(line.unit_price, cur)} each"
                f"{_fee_suffix(line.flat_fee, cur)} = {format_amount(line.amount, cur)}."
            )
    elif spec.model is PriceModel.PACKAGE and billed:
        lines.append(
            f"{format_quantity(billed)} {unit} make {packages} "
            f"package{'s' if packages != 1 else ''} of {spec.package_size} "
            f"(a started package counts in full) at {format_amount(spec.package_price, cur)} "
            f"each: {format_amount(usage_amount, cur)}."
        )
    if spec.flat_fee:
        lines.append(f"Fixed fee for this line: {format_amount(spec.flat_fee, cur)}.")
    lines.append(f"Line total: {format_amount(amount, cur)}.")

    return LineAmount(
        spec=spec,
        quantity=quantity,
        included_units=included,
        units_billed=billed,
        usage_amount=usage_amount,
        flat_fee=spec.flat_fee,
        amount=amount,
        tiers=tuple(tier_lines),
        packages=packages,
        description=tuple(lines),
    )


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: LineKind
    title: str
    amount_minor: int
    currency: str
    usage: LineAmount | None = None  # usage lines only
    description: tuple[str, ...] = ()

    @property
    def money(self) -> Money:
        return Money(self.amount_minor, self.currency)


@dataclass(frozen=True, slots=True)
class InvoiceAmount:
    """An invoice's lines in minor units; `total_minor` is the sum of the lines' minor units."""

    currency: str
    lines: tuple[InvoiceLine, ...]
    total_minor: int
    minimum_commitment_minor: int

    @property
    def total(self) -> Money:
        return Money(self.total_minor, self.currency)

    @property
    def subtotal_minor(self) -> int:
        """Before the minimum-commitment true-up."""
        return sum(
            line.amount_minor for line in self.lines if line.kind is not LineKind.MINIMUM_COMMITMENT
        )

    @property
    def true_up_minor(self) -> int:
        return self.total_minor - self.subtotal_minor


def _minor(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PricingError(f"{what} must be an int of minor units, got {type(value).__name__}.")
    if value < 0:
        raise PricingError(f"{what} must not be negative, got {value}.")
    return value


def price_invoice(
    *,
    lines: Sequence[tuple[PriceSpec, Decimal]],
    currency: str,
    flat_fee_minor: int = 0,
    minimum_commitment_minor: int = 0,
) -> InvoiceAmount:
    """Price a period: the plan's fixed fee, one line per (price, quantity), then a true-up.

    Each usage line is rounded once (billing.money.to_minor_units). If the rounded total is
    below the minimum commitment, a "minimum commitment true-up" line brings it up to it.
    """
    currency = currency.upper()
    currency_exponent(currency)
    flat_fee_minor = _minor(flat_fee_minor, "The plan's flat fee")
    minimum_commitment_minor = _minor(minimum_commitment_minor, "The minimum commitment")

    out: list[InvoiceLine] = []
    if flat_fee_minor:
        out.append(
            InvoiceLine(
                kind=LineKind.PLAN_FEE,
                title="Plan fee",
                amount_minor=flat_fee_minor,
                currency=currency,
                description=(f"The plan's fixed fee: {format_money(flat_fee_minor, currency)}.",),
            )
        )
    for spec, quantity in lines:
        if spec.currency != currency:
            raise PricingError(
                f"A {spec.currency} price cannot be on a {currency} invoice.", field="currency"
            )
        line = price_usage(price=spec, quantity=quantity)
        minor = to_minor_units(line.amount, currency)
        description = line.description
        if from_minor_units(minor, currency) != line.amount:
            description += (
                f"Billed as {format_money(minor, currency)}: the exact amount rounded once to "
                f"the currency's smallest unit (halves round up).",
            )
        out.append(
            InvoiceLine(
                kind=LineKind.USAGE,
                title=spec.title,
                amount_minor=minor,
                currency=currency,
                usage=line,
                description=description,
            )
        )
    subtotal = sum(line.amount_minor for line in out)
    if subtotal < minimum_commitment_minor:
        true_up = minimum_commitment_minor - subtotal
        out.append(
            InvoiceLine(
                kind=LineKind.MINIMUM_COMMITMENT,
                title="Minimum commitment true-up",
                amount_minor=true_up,
                currency=currency,
                description=(
                    f"The plan commits to at least {format_money(minimum_commitment_minor, currency)}"
                    f" per period; charges so far are {format_money(subtotal, currency)}, so "
                    f"{format_money(true_up, currency)} is added.",
                ),
            )
        )
    return InvoiceAmount(
        currency=currency,
        lines=tuple(out),
        total_minor=sum(line.amount_minor for line in out),
        minimum_commitment_minor=minimum_commitment_minor,
    )
