"""The pricing engine, property by property (hypothesis) and by worked example.

Expected amounts are computed independently here with fractions.Fraction, never with the
engine's own code, so a shared mistake cannot hide.
"""

from __future__ import annotations

import decimal
import itertools
import math
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from billing.money import to_minor_units
from billing.pricing import (
    LineKind,
    PriceModel,
    PriceSpec,
    PricingError,
    Tier,
    price_invoice,
    price_usage,
    tiers_from_json,
    tiers_to_json,
)

relaxed = settings(deadline=None)
WIDE = decimal.Context(prec=200)


def decimals(max_int: int, max_places: int, min_int: int = 0):
    """Exact decimals n * 10**-p, built from integers so no float is ever involved."""
    return st.builds(
        lambda n, p: Decimal(n).scaleb(-p),
        st.integers(min_value=min_int, max_value=max_int),
        st.integers(min_value=0, max_value=max_places),
    )


unit_prices = decimals(10**6, 12)
fees = st.one_of(st.just(Decimal(0)), decimals(10**6, 4))
quantities = decimals(10**10, 6)
bounds = decimals(10**8, 3, min_int=1)


@st.composite
def tier_lists(draw, *, monotone_volume: bool = False) -> tuple[Tier, ...]:
    ups = sorted(set(draw(st.lists(bounds, min_size=0, max_size=4))))
    raw = [(up, draw(unit_prices), draw(fees)) for up in [*ups, None]]
    if monotone_volume:
        # Raise each tier's flat fee just enough that usage above a bound never costs less than
        # usage at it (rounded up to the 12 places a fee may have).
        for i in range(1, len(raw)):
            bound, p_prev, f_prev = raw[i - 1]
            up, p, f = raw[i]
            with decimal.localcontext(WIDE):
                needed = (bound * p_prev + f_prev - bound * p).quantize(
                    Decimal("1e-12"), rounding=ROUND_CEILING
                )
            raw[i] = (up, p, max(f, needed))
    return tuple(Tier(up_to=up, unit_price=p, flat_fee=f) for up, p, f in raw)


@st.composite
def price_specs(draw, model: PriceModel | None = None) -> PriceSpec:
    model = model or draw(st.sampled_from(list(PriceModel)))
    common = {
        "model": model,
        "currency": "USD",
        "included_units": draw(st.one_of(st.just(Decimal(0)), quantities)),
        "flat_fee": draw(fees),
    }
    if model is PriceModel.PER_UNIT:
        return PriceSpec(unit_price=draw(unit_prices), **common)
    if model is PriceModel.PACKAGE:
        return PriceSpec(
            package_size=draw(st.integers(min_value=1, max_value=10**6)),
            package_price=draw(unit_prices),
            **common,
        )
    return PriceSpec(tiers=draw(tier_lists(monotone_volume=model is PriceModel.VOLUME)), **common)


def billed_of(spec: PriceSpec, quantity: Decimal) -> Fraction:
    return max(Fraction(0), Fraction(quantity) - Fraction(spec.included_units))


def expected_graduated(tiers, billed: Fraction) -> Fraction:
    total = Fraction(0)
    lower = Fraction(0)
    for tier in tiers:
        upper = None if tier.up_to is None else Fraction(tier.up_to)
        in_tier = (billed if upper is None else min(billed, upper)) - lower
        if in_tier > 0:
            total += in_tier * Fraction(tier.unit_price) + Fraction(tier.flat_fee)
        if upper is not None:
            lower = upper
    return total


def reached_tier(tiers, billed: Fraction) -> int:
    for index, tier in enumerate(tiers):
        if tier.up_to is None or billed <= Fraction(tier.up_to):
            return index
    raise AssertionError("the last tier is unbounded")


# --- the properties --------------------------------------------------------------------------


@relaxed
@given(spec=price_specs(PriceModel.GRADUATED), quantity=quantities)
def test_graduated_equals_the_sum_over_its_tiers(spec, quantity):
    line = price_usage(price=spec, quantity=quantity)
    billed = billed_of(spec, quantity)
    expected = expected_graduated(spec.tiers, billed) + Fraction(spec.flat_fee)
    assert Fraction(line.amount) == expected
    assert sum(Fraction(t.amount) for t in line.tiers) == Fraction(line.usage_amount)
    assert sum(Fraction(t.units) for t in line.tiers) == billed


@relaxed
@given(spec=price_specs(PriceModel.VOLUME), quantity=quantities)
def test_volume_charges_every_unit_at_the_tier_reached(spec, quantity):
    line = price_usage(price=spec, quantity=quantity)
    billed = billed_of(spec, quantity)
    if billed == 0:
        assert line.usage_amount == 0
        assert line.tiers == ()
        return
    index = reached_tier(spec.tiers, billed)
    tier = spec.tiers[index]
    assert [t.index for t in line.tiers] == [index]
    assert Fraction(line.tiers[0].units) == billed
    assert Fraction(line.usage_amount) == billed * Fraction(tier.unit_price) + Fraction(
        tier.flat_fee
    )


@relaxed
@given(spec=price_specs(PriceModel.PACKAGE), quantity=quantities)
def test_package_rounds_a_started_package_up(spec, quantity):
    line = price_usage(price=spec, quantity=quantity)
    billed = billed_of(spec, quantity)
    packages = math.ceil(billed / spec.package_size)
    assert line.packages == packages
    assert packages * spec.package_size >= billed > (packages - 1) * spec.package_size or (
        packages == 0 and billed == 0
    )
    assert Fraction(line.usage_amount) == packages * Fraction(spec.package_price)


@relaxed
@given(spec=price_specs(PriceModel.PER_UNIT), quantity=quantities)
def test_per_unit_is_units_times_price(spec, quantity):
    line = price_usage(price=spec, quantity=quantity)
    assert Fraction(line.usage_amount) == billed_of(spec, quantity) * Fraction(spec.unit_price)


@relaxed
@given(spec=price_specs(), quantity=quantities, more=quantities)
def test_a_price_never_decreases_when_usage_grows(spec, quantity, more):
    lower = price_usage(price=spec, quantity=quantity)
    higher = price_usage(price=spec, quantity=quantity + more)
    assert lower.amount <= higher.amount
    # Rounding half up keeps the order, so the billed minor units never decrease either.
    assert to_minor_units(lower.amount, "USD") <= to_minor_units(higher.amount, "USD")


@relaxed
@given(spec=price_specs(), quantity=quantities)
def test_included_units_never_produce_negative_amounts(spec, quantity):
    line = price_usage(price=spec, quantity=quantity)
    assert line.units_billed >= 0
    assert line.usage_amount >= 0
    assert line.amount >= spec.flat_fee
    assert line.included_units == min(quantity, spec.included_units)
    assert line.included_units + line.units_billed == quantity
    if quantity <= spec.included_units:
        assert line.usage_amount == 0
        assert line.amount == spec.flat_fee


@relaxed
@given(
    lines=st.lists(st.tuples(price_specs(), quantities), max_size=5),
    flat_fee_minor=st.integers(min_value=0, max_value=10**7),
    commitment=st.integers(min_value=0, max_value=10**9),
)
def test_invoice_total_is_the_sum_of_its_rounded_lines(lines, flat_fee_minor, commitment):
    invoice = price_invoice(
        lines=lines,
        currency="USD",
        flat_fee_minor=flat_fee_minor,
        minimum_commitment_minor=commitment,
    )
    assert invoice.total_minor == sum(line.amount_minor for line in invoice.lines)
    assert all(type(line.amount_minor) is int for line in invoice.lines)
    usage = [line for line in invoice.lines if line.kind is LineKind.USAGE]
    assert len(usage) == len(lines)
    for line, (spec, quantity) in zip(usage, lines, strict=True):
        # Each line is rounded once, from its exact amount.
        assert line.amount_minor == to_minor_units(
            price_usage(price=spec, quantity=quantity).amount, "USD"
        )
    subtotal = flat_fee_minor + sum(line.amount_minor for line in usage)
    assert invoice.subtotal_minor == subtotal
    assert invoice.total_minor == max(subtotal, commitment)
    true_ups = [line for line in invoice.lines if line.kind is LineKind.MINIMUM_COMMITMENT]
    assert len(true_ups) == (1 if subtotal < commitment else 0)


@relaxed
@given(
    price=decimals(10**18 - 1, 12),
    quantity=decimals(10**38 - 1, 12),
)
def test_unit_prices_with_twelve_places_are_multiplied_exactly(price, quantity):
    # Up to 30-digit prices times 38-digit quantities: far past the default 28-digit context.
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="USD", unit_price=price)
    line = price_usage(price=spec, quantity=quantity)
    assert isinstance(line.amount, Decimal)
    assert Fraction(line.amount) == Fraction(price) * Fraction(quantity)


@relaxed
@given(tiers=tier_lists(), quantity=quantities, more=quantities)
def test_volume_tiers_that_would_make_usage_cheaper_are_refused(tiers, quantity, more):
    cliff = any(
        Fraction(a.up_to) * Fraction(b.unit_price) + Fraction(b.flat_fee)
        < Fraction(a.up_to) * Fraction(a.unit_price) + Fraction(a.flat_fee)
        for a, b in itertools.pairwise(tiers)
    )
    if cliff:
        with pytest.raises(PricingError) as excinfo:
            PriceSpec(model=PriceModel.VOLUME, currency="USD", tiers=tiers)
        assert excinfo.value.field == "tiers"
        return
    spec = PriceSpec(model=PriceModel.VOLUME, currency="USD", tiers=tiers)
    assume(more > 0)
    assert (
        price_usage(price=spec, quantity=quantity).amount
        <= price_usage(price=spec, quantity=quantity + more).amount
    )


# --- worked examples -------------------------------------------------------------------------


def test_fraction_of_a_cent_per_call_is_exact_then_rounded_once():
    spec = PriceSpec(
        model=PriceModel.PER_UNIT, currency="USD", unit_price=Decimal("0.0004"), unit="API calls"
    )
    line = price_usage(price=spec, quantity=Decimal(12_345_678))
    assert line.amount == Decimal("4938.2712")
    invoice = price_invoice(lines=[(spec, Decimal(12_345_678))], currency="USD")
    assert invoice.total_minor == 493827
    assert line.description == (
        "12,345,678 API calls used.",
        "12,345,678 API calls at $0.0004 each: $4,938.2712.",
        "Line total: $4,938.2712.",
    )


def test_a_line_is_rounded_once_not_tier_by_tier():
    # Each tier costs half a cent; rounding per tier would bill 2 cents, once per line bills 1.
    spec = PriceSpec(
        model=PriceModel.GRADUATED,
        currency="USD",
        tiers=(Tier(up_to=Decimal(1), unit_price=Decimal("0.005")), Tier(None, Decimal("0.005"))),
    )
    line = price_usage(price=spec, quantity=Decimal(2))
    assert [t.amount for t in line.tiers] == [Decimal("0.005"), Decimal("0.005")]
    invoice = price_invoice(lines=[(spec, Decimal(2))], currency="USD")
    assert invoice.total_minor == 1


def test_graduated_with_included_units_explains_each_tier():
    spec = PriceSpec(
        model=PriceModel.GRADUATED,
        currency="USD",
        included_units=Decimal(1_000_000),
        tiers=tiers_from_json(
            [
                {"up_to": "1000000", "unit_price": "0.001"},
                {"up_to": None, "unit_price": "0.0005", "flat_fee": "10"},
            ]
        ),
        unit="API calls",
    )
    line = price_usage(price=spec, quantity=Decimal(12_400_000))
    assert line.units_billed == Decimal(11_400_000)
    assert line.amount == Decimal(1000) + Decimal("5200") + Decimal(10)
    assert [(t.index, t.from_units, t.to_units, t.units) for t in line.tiers] == [
        (0, 0, Decimal(1_000_000), Decimal(1_000_000)),
        (1, Decimal(1_000_000), None, Decimal(10_400_000)),
    ]
    assert line.description[0] == (
        "12,400,000 API calls used; the first 1,000,000 are included, so 11,400,000 are billed."
    )
    assert line.description[1] == (
        "Tier 1 (the first 1,000,000 API calls): 1,000,000 at $0.001 each = $1,000.00."
    )
    assert line.description[2] == (
        "Tier 2 (above 1,000,000 API calls): 10,400,000 at $0.0005 each, plus a flat fee of "
        "$10.00 = $5,210.00."
    )


def test_usage_within_the_allowance_costs_nothing_and_says_so():
    spec = PriceSpec(
        model=PriceModel.PER_UNIT,
        currency="USD",
        unit_price=Decimal(1),
        included_units=Decimal(100),
        unit="GB",
    )
    line = price_usage(price=spec, quantity=Decimal("99.5"))
    assert line.amount == 0
    assert line.description[0] == "99.5 GB used, all within the 100 included; no usage charge."


@pytest.mark.parametrize(
    ("quantity", "tier", "amount"),
    [("1000", 0, "1000"), ("1000.5", 1, "1000.45"), ("1", 0, "1"), ("5000", 1, "4600")],
)
def test_volume_tier_bounds_are_inclusive(quantity, tier, amount):
    spec = PriceSpec(
        model=PriceModel.VOLUME,
        currency="USD",
        tiers=(
            Tier(up_to=Decimal(1000), unit_price=Decimal(1)),
            Tier(up_to=None, unit_price=Decimal("0.9"), flat_fee=Decimal(100)),
        ),
    )
    line = price_usage(price=spec, quantity=Decimal(quantity))
    assert line.tiers[0].index == tier
    assert line.amount == Decimal(amount)


@pytest.mark.parametrize(
    ("quantity", "packages"), [("0", 0), ("1", 1), ("1000", 1), ("1000.001", 2), ("2500", 3)]
)
def test_package_counts_started_packages(quantity, packages):
    spec = PriceSpec(
        model=PriceModel.PACKAGE, currency="USD", package_size=1000, package_price=Decimal("0.5")
    )
    line = price_usage(price=spec, quantity=Decimal(quantity))
    assert line.packages == packages
    assert line.amount == Decimal("0.5") * packages


def test_minimum_commitment_adds_a_true_up_line_only_when_below():
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="USD", unit_price=Decimal("0.01"))
    below = price_invoice(
        lines=[(spec, Decimal(1000))],
        currency="USD",
        flat_fee_minor=500,
        minimum_commitment_minor=10_000,
    )
    assert [(line.kind, line.amount_minor) for line in below.lines] == [
        (LineKind.PLAN_FEE, 500),
        (LineKind.USAGE, 1000),
        (LineKind.MINIMUM_COMMITMENT, 8500),
    ]
    assert below.total_minor == 10_000
    assert below.true_up_minor == 8500
    assert "$85.00 is added" in below.lines[-1].description[0]
    above = price_invoice(
        lines=[(spec, Decimal(1_000_000))], currency="USD", minimum_commitment_minor=10_000
    )
    assert [line.kind for line in above.lines] == [LineKind.USAGE]
    assert above.total_minor == 1_000_000


def test_invoice_refuses_a_price_in_another_currency():
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="EUR", unit_price=Decimal(1))
    with pytest.raises(PricingError):
        price_invoice(lines=[(spec, Decimal(1))], currency="USD")


def test_invoice_rounds_lines_in_the_currencys_minor_unit():
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="JPY", unit_price=Decimal("0.5"))
    assert price_invoice(lines=[(spec, Decimal(3))], currency="JPY").total_minor == 2
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="KWD", unit_price=Decimal("0.0005"))
    assert price_invoice(lines=[(spec, Decimal(3))], currency="KWD").total_minor == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "per_unit", "unit_price": Decimal("0.0000000000001")}, "unit_price"),
        ({"model": "per_unit", "unit_price": Decimal(-1)}, "unit_price"),
        ({"model": "per_unit", "unit_price": 0.5}, "unit_price"),
        ({"model": "per_unit", "tiers": [{"up_to": None, "unit_price": "1"}]}, "tiers"),
        (
            {
                "model": "graduated",
                "unit_price": Decimal(1),
                "tiers": [{"up_to": None, "unit_price": "1"}],
            },
            "unit_price",
        ),
        ({"model": "graduated"}, "tiers"),
        ({"model": "graduated", "tiers": [{"up_to": "10", "unit_price": "1"}]}, "tiers"),
        (
            {
                "model": "volume",
                "tiers": [
                    {"up_to": "10", "unit_price": "1"},
                    {"up_to": "5", "unit_price": "1"},
                    {"up_to": None, "unit_price": "1"},
                ],
            },
            "tiers",
        ),
        (
            {
                "model": "volume",
                "tiers": [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}],
            },
            "tiers",
        ),
        ({"model": "volume", "tiers": [{"up_to": None, "unit_price": 0.1}]}, "tiers"),
        ({"model": "volume", "tiers": [{"up_to": None, "price": "1"}]}, "tiers"),
        ({"model": "package", "package_price": Decimal(1)}, "package_size"),
        ({"model": "package", "package_size": 0, "package_price": Decimal(1)}, "package_size"),
        ({"model": "per_unit", "package_size": 10}, "package_size"),
        ({"model": "banded"}, "model"),
        ({"model": "per_unit", "currency": "dollars"}, "currency"),
        ({"model": "per_unit", "included_units": Decimal("NaN")}, "included_units"),
    ],
)
def test_invalid_prices_are_refused_with_the_field_at_fault(kwargs, field):
    kwargs = {"currency": "USD", **kwargs}
    with pytest.raises(PricingError) as excinfo:
        PriceSpec(**kwargs)
    assert excinfo.value.field == field


def test_a_float_quantity_is_refused():
    spec = PriceSpec(model=PriceModel.PER_UNIT, currency="USD", unit_price=Decimal(1))
    with pytest.raises(PricingError):
        price_usage(price=spec, quantity=1.5)  # type: ignore[arg-type]
    with pytest.raises(PricingError):
        price_usage(price=spec, quantity=Decimal(-1))


def test_volume_cliff_error_says_how_much_to_add():
    with pytest.raises(PricingError) as excinfo:
        PriceSpec(
            model=PriceModel.VOLUME,
            currency="USD",
            tiers=tiers_from_json(
                [{"up_to": "1000", "unit_price": "1"}, {"up_to": None, "unit_price": "0.8"}]
            ),
        )
    assert "Raise tier 2's flat fee by at least $200.00" in excinfo.value.message


def test_tiers_round_trip_through_json_as_strings():
    tiers = (
        Tier(up_to=Decimal("1E+6"), unit_price=Decimal("0.000400000000")),
        Tier(up_to=None, unit_price=Decimal("0.0002"), flat_fee=Decimal("5.00")),
    )
    stored = tiers_to_json(tiers)
    assert stored == [
        {"up_to": "1000000", "unit_price": "0.0004", "flat_fee": "0"},
        {"up_to": None, "unit_price": "0.0002", "flat_fee": "5"},
    ]
    assert tiers_from_json(stored) == tiers


def test_engine_models_match_the_stored_choices():
    from billing.models import Price

    assert sorted(Price.PricingModel.values) == sorted(m.value for m in PriceModel)


def test_decimal_places_are_counted_past_the_default_28_digit_context():
    # 18 digits before the point and 13 after: 31 significant digits, one place too many.
    with pytest.raises(PricingError):
        PriceSpec(
            model=PriceModel.PER_UNIT,
            currency="USD",
            unit_price=Decimal("123456789012345678.0000000000001"),
        )
    spec = PriceSpec(
        model=PriceModel.PER_UNIT,
        currency="USD",
        unit_price=Decimal("123456789012345678.000000000001"),
    )
    assert spec.unit_price == Decimal("123456789012345678.000000000001")
