"""The four-eyes policy: limits per currency (minor units from ISO 4217), the most specific
policy row, expiry, and credits that never take a total below zero."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adjustments.models import AdjustmentPolicy
from adjustments.policy import (
    DEFAULT_POLICY,
    Policy,
    PolicyError,
    expires_at,
    is_expired,
    limit_minor,
    policy_for,
    within_limit,
)
from billing.projection import credit_off


@pytest.mark.parametrize(
    ("currency", "limit_minor_units"),
    [("USD", 10000), ("EUR", 10000), ("JPY", 100), ("KRW", 100), ("KWD", 100000), ("CLF", 1000000)],
)
def test_the_default_limit_is_100_in_the_accounts_own_currency(currency, limit_minor_units):
    assert limit_minor(DEFAULT_POLICY.support_limit, currency) == limit_minor_units
    assert within_limit(amount_minor=limit_minor_units, currency=currency, policy=DEFAULT_POLICY)
    assert not within_limit(
        amount_minor=limit_minor_units + 1, currency=currency, policy=DEFAULT_POLICY
    )


@pytest.mark.parametrize(
    ("limit", "currency", "amount", "within"),
    [
        (Decimal("0"), "USD", 1, False),
        (Decimal("0"), "USD", 0, True),
        (Decimal("250.50"), "USD", 25050, True),
        (Decimal("250.50"), "USD", 25051, False),
        (Decimal("5000"), "JPY", 5000, True),
        (Decimal("5000"), "JPY", 5001, False),
        (Decimal("1.250"), "KWD", 1250, True),
        (Decimal("1.250"), "KWD", 1251, False),
        # A usage correction's price difference counts by its size, either way.
        (Decimal("10"), "USD", -1000, True),
        (Decimal("10"), "USD", -1001, False),
    ],
)
def test_limits_table(limit, currency, amount, within):
    policy = Policy(support_limit=limit, expiry_days=7, allow_carried_balance=False)
    assert within_limit(amount_minor=amount, currency=currency, policy=policy) is within


def test_a_limit_finer_than_the_currencys_minor_unit_is_refused_not_rounded():
    with pytest.raises(PolicyError):
        limit_minor(Decimal("0.5"), "JPY")
    with pytest.raises(PolicyError):
        limit_minor(Decimal("0.0005"), "KWD")
    assert limit_minor(Decimal("0.005"), "KWD") == 5


@given(
    limit=st.decimals(min_value=0, max_value=10**9, places=0),
    currency=st.sampled_from(["USD", "JPY", "KWD", "EUR", "BHD", "CLF"]),
    amount=st.integers(min_value=0, max_value=10**16),
)
def test_within_limit_is_exactly_amount_at_most_limit_in_minor_units(limit, currency, amount):
    places = {"USD": 2, "JPY": 0, "KWD": 3, "EUR": 2, "BHD": 3, "CLF": 4}[currency]
    policy = Policy(support_limit=limit, expiry_days=1, allow_carried_balance=False)
    assert within_limit(amount_minor=amount, currency=currency, policy=policy) is (
        amount <= int(limit) * 10**places
    )


@given(
    total=st.integers(min_value=0, max_value=10**12),
    credit=st.integers(min_value=1, max_value=10**12),
    carried=st.booleans(),
)
def test_a_credit_never_takes_a_total_below_zero_without_a_carried_balance(total, credit, carried):
    off = credit_off(total_minor=total, credit_minor=credit, allow_carried_balance=carried)
    if carried:
        assert off == credit
    else:
        assert 0 <= off <= credit and total - off == max(0, total - credit)


@pytest.mark.parametrize(
    ("days", "elapsed", "expired"),
    [
        (7, dt.timedelta(days=6, hours=23, minutes=59), False),
        (7, dt.timedelta(days=7), True),
        (1, dt.timedelta(hours=23), False),
        (1, dt.timedelta(days=1, seconds=1), True),
        (0, dt.timedelta(0), True),
    ],
)
def test_expiry_table(days, elapsed, expired):
    submitted = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC)  # across a DST change in Europe
    policy = Policy(support_limit=Decimal(1), expiry_days=days, allow_carried_balance=False)
    deadline = expires_at(submitted_at=submitted, policy=policy)
    assert is_expired(expires=deadline, now=submitted + elapsed) is expired


@pytest.mark.django_db
def test_the_most_specific_policy_row_wins():
    assert policy_for(currency="JPY", tier="gold") == DEFAULT_POLICY
    AdjustmentPolicy.objects.create(currency="", tier="", support_limit=Decimal(50))
    assert policy_for(currency="JPY", tier="gold").support_limit == 50
    AdjustmentPolicy.objects.create(currency="", tier="gold", support_limit=Decimal(60))
    assert policy_for(currency="JPY", tier="gold").support_limit == 60
    AdjustmentPolicy.objects.create(currency="JPY", tier="", support_limit=Decimal(10000))
    assert policy_for(currency="JPY", tier="gold").support_limit == 10000
    AdjustmentPolicy.objects.create(currency="JPY", tier="gold", support_limit=Decimal(20000))
    assert policy_for(currency="JPY", tier="gold").support_limit == 20000
    assert policy_for(currency="USD", tier="silver").support_limit == 50
