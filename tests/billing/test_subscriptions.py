"""Plans, prices and subscriptions: the services, the selectors and what the database keeps."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from billing.models import BillingPeriod, DecimalJSONDecoder, Price, Subscription
from billing.pricing import PriceModel, price_usage
from billing.selectors import (
    period_containing,
    period_open,
    period_previous,
    periods_for_account,
    plan_prices,
    subscription_current,
)
from billing.services.periods import billing_period_begin_close
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import (
    subscription_activate_due,
    subscription_cancel,
    subscription_create,
)
from tests.billing.factories import AccountFactory, MeterFactory, PlanFactory, PriceFactory

pytestmark = pytest.mark.django_db

D = dt.date


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


# --- plans and prices ------------------------------------------------------------------------


def test_plan_create_records_who_made_it(django_user_model):
    user = django_user_model.objects.create_user("pricing-admin")
    plan = plan_create(
        code="scale",
        name="Scale",
        currency="eur",
        flat_fee_minor=49_00,
        minimum_commitment_minor=500_00,
        actor=user,
    )
    assert plan.currency == "EUR"
    assert plan.flat_fee_display == "€49.00"
    assert plan.history.get().history_user == user


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"code": "Bad Code"}, "code"),
        ({"currency": "EURO"}, "currency"),
        ({"flat_fee_minor": -1}, "flat_fee_minor"),
        ({"minimum_commitment_minor": Decimal("10.5")}, "minimum_commitment_minor"),
        ({"billing_interval": "week"}, "billing_interval"),
    ],
)
def test_plan_create_refuses_invalid_plans(kwargs, field):
    with pytest.raises(ValidationError) as excinfo:
        plan_create(**{"code": "ok", "name": "OK", "currency": "USD", **kwargs})
    assert field in excinfo.value.message_dict


def test_price_add_stores_tiers_as_exact_decimal_strings():
    plan = PlanFactory()
    meter = MeterFactory()
    price = price_add(
        plan=plan,
        meter=meter,
        model=PriceModel.GRADUATED,
        included_units="1000",
        tiers=[
            {"up_to": Decimal("1E+6"), "unit_price": Decimal("0.000400000000")},
            {"up_to": None, "unit_price": "0.000123456789", "flat_fee": 5},
        ],
    )
    price.refresh_from_db()
    assert price.tiers == [
        {"up_to": "1000000", "unit_price": "0.0004", "flat_fee": "0"},
        {"up_to": None, "unit_price": "0.000123456789", "flat_fee": "5"},
    ]
    spec = price.to_spec()
    assert spec.tiers[1].unit_price == Decimal("0.000123456789")
    assert spec.included_units == Decimal(1000)
    assert spec.meter_code == meter.code
    line = price_usage(price=spec, quantity=Decimal(1_001_000))
    assert line.amount == Decimal(400)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "graduated", "tiers": [{"up_to": "10", "unit_price": "1"}]}, "tiers"),
        ({"model": "per_unit", "unit_price": Decimal("0.0000000000001")}, "unit_price"),
        ({"model": "package", "package_price": "1"}, "package_size"),
        ({"model": "per_unit", "unit_price": "abc"}, "unit_price"),
        (
            {
                "model": "volume",
                "tiers": [
                    {"up_to": "1000", "unit_price": "1"},
                    {"up_to": None, "unit_price": "0.5"},
                ],
            },
            "tiers",
        ),
    ],
)
def test_price_add_refuses_invalid_prices_by_field(kwargs, field):
    with pytest.raises(ValidationError) as excinfo:
        price_add(plan=PlanFactory(), meter=MeterFactory(), **kwargs)
    assert field in excinfo.value.message_dict
    assert not Price.objects.exists()


def test_price_add_refuses_floats():
    with pytest.raises(TypeError):
        price_add(plan=PlanFactory(), meter=MeterFactory(), model="per_unit", unit_price=0.0004)


def test_a_plan_prices_each_meter_once():
    price = PriceFactory()
    with pytest.raises(ValidationError):
        price_add(plan=price.plan, meter=price.meter, model="per_unit", unit_price="1")


def test_prices_typed_as_json_numbers_are_read_as_decimals_not_floats():
    # What the admin's JSON field does with a typed tier list.
    data = json.loads('[{"up_to": null, "unit_price": 0.123456789012}]', cls=DecimalJSONDecoder)
    assert data[0]["unit_price"] == Decimal("0.123456789012")
    price = PriceFactory.build(
        plan=PlanFactory(), meter=MeterFactory(), model="volume", unit_price=Decimal(0), tiers=data
    )
    price.full_clean()
    assert price.tiers == [{"up_to": None, "unit_price": "0.123456789012", "flat_fee": "0"}]


def test_the_database_refuses_negative_prices():
    price = PriceFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Price.objects.filter(pk=price.pk).update(unit_price=Decimal(-1))


# --- subscriptions ---------------------------------------------------------------------------


@pytest.fixture
def plan():
    plan = plan_create(code="growth", name="Growth", currency="USD", flat_fee_minor=10_00)
    price_add(plan=plan, meter=MeterFactory(code="api_calls"), model="per_unit", unit_price="0.001")
    return plan


def test_subscription_defaults_its_anchor_to_the_start_day_and_opens_its_first_period(plan):
    account = AccountFactory(timezone="Asia/Kathmandu")
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 31), now=utc(2024, 1, 31, 12)
    )
    assert sub.billing_anchor_day == 31
    assert sub.status == Subscription.Status.ACTIVE
    period = BillingPeriod.objects.get(subscription=sub)
    assert (period.start_date, period.end_date) == (D(2024, 1, 31), D(2024, 2, 29))
    assert period.starts_at == utc(2024, 1, 30, 18, 15)
    assert period.account == account


def test_a_backdated_subscription_opens_every_period_up_to_now(plan):
    account = AccountFactory(timezone="America/New_York")
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 10), now=utc(2024, 4, 2)
    )
    assert list(sub.periods.order_by("start_date").values_list("start_date", flat=True)) == [
        D(2024, 1, 10),
        D(2024, 2, 10),
        D(2024, 3, 10),
    ]


def test_a_subscription_with_another_anchor_starts_with_a_short_period(plan):
    sub = subscription_create(
        account=AccountFactory(),
        plan=plan,
        started_at=D(2024, 5, 20),
        billing_anchor_day=1,
        now=utc(2024, 6, 3),
    )
    periods = list(sub.periods.order_by("start_date").values_list("start_date", "end_date"))
    assert periods == [(D(2024, 5, 20), D(2024, 6, 1)), (D(2024, 6, 1), D(2024, 7, 1))]


def test_a_future_subscription_is_pending_until_it_starts(plan):
    account = AccountFactory()
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 7, 1), now=utc(2024, 6, 15)
    )
    assert sub.status == Subscription.Status.PENDING
    assert sub.periods.count() == 1
    assert subscription_current(account=account, at=utc(2024, 6, 30, 23)) is None
    assert subscription_current(account=account, at=utc(2024, 7, 1)) == sub


def test_an_account_cannot_hold_two_subscriptions_for_the_same_day(plan):
    account = AccountFactory()
    subscription_create(account=account, plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 1, 2))
    with pytest.raises(ValidationError) as excinfo:
        subscription_create(
            account=account, plan=plan, started_at=D(2024, 6, 1), now=utc(2024, 1, 2)
        )
    assert "started_at" in excinfo.value.message_dict


@pytest.mark.parametrize(
    ("setup", "field"),
    [("eur_account", "plan"), ("inactive_plan", "plan"), ("anchor_32", "billing_anchor_day")],
)
def test_subscription_create_refuses_mismatches(plan, setup, field):
    account = AccountFactory(currency="EUR" if setup == "eur_account" else "USD")
    if setup == "inactive_plan":
        plan.active = False
        plan.save()
    with pytest.raises(ValidationError) as excinfo:
        subscription_create(
            account=account,
            plan=plan,
            started_at=D(2024, 1, 1),
            billing_anchor_day=32 if setup == "anchor_32" else None,
        )
    assert field in excinfo.value.message_dict
    assert not Subscription.objects.exists()


def test_cancel_cuts_the_last_period_and_allows_a_new_plan_from_then(plan, django_user_model):
    user = django_user_model.objects.create_user("support")
    account = AccountFactory()
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 15), now=utc(2024, 3, 20)
    )
    canceled = subscription_cancel(subscription=sub, ended_at=D(2024, 3, 25), actor=user)
    assert canceled.status == Subscription.Status.CANCELED
    last = sub.periods.order_by("-start_date").first()
    assert (last.start_date, last.end_date) == (D(2024, 3, 15), D(2024, 3, 25))
    assert last.ends_at == utc(2024, 3, 25)
    assert canceled.history.latest().history_user == user

    other = plan_create(code="scale", name="Scale", currency="USD")
    new = subscription_create(
        account=account, plan=other, started_at=D(2024, 3, 25), now=utc(2024, 3, 26)
    )
    assert subscription_current(account=account, at=utc(2024, 3, 24, 23)) == sub
    assert subscription_current(account=account, at=utc(2024, 3, 25)) == new


def test_cancel_refuses_to_reach_into_an_invoiced_period(plan):
    sub = subscription_create(
        account=AccountFactory(), plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 2, 10)
    )
    january = sub.periods.get(start_date=D(2024, 1, 1))
    billing_period_begin_close(period=january, now=utc(2024, 2, 1, 1))  # after the grace
    with pytest.raises(ValidationError):
        subscription_cancel(subscription=sub, ended_at=D(2024, 1, 20))


def test_the_database_allows_one_active_subscription_per_account(plan):
    sub = subscription_create(
        account=AccountFactory(), plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 1, 2)
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Subscription.objects.create(
            account=sub.account, plan=plan, started_at=D(2030, 1, 1), billing_anchor_day=1
        )


# --- selectors -------------------------------------------------------------------------------


def test_period_selectors_tell_open_closing_and_previous_periods_apart(plan):
    account = AccountFactory(timezone="Asia/Kolkata")
    subscription_create(account=account, plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 2, 5))
    january, february = periods_for_account(account=account).order_by("start_date")
    assert period_open(account=account, at=utc(2024, 2, 5)) == february
    assert period_open(account=account, at=utc(2024, 1, 31, 18, 29)) == january
    billing_period_begin_close(period=january, now=utc(2024, 2, 5))
    # A late event for January: its period exists but is no longer open.
    assert period_open(account=account, at=utc(2024, 1, 20)) is None
    assert period_containing(account=account, at=utc(2024, 1, 20)).state == "closing"
    assert period_previous(period=february) == january
    assert period_previous(period=january) is None
    assert period_open(account=AccountFactory(), at=utc(2024, 2, 5)) is None


def test_plan_prices_are_specs_in_meter_order(plan, django_assert_num_queries):
    price_add(
        plan=plan,
        meter=MeterFactory(code="a_storage", unit="GB"),
        model="package",
        package_size=10,
        package_price="2",
    )
    with django_assert_num_queries(1):
        rows = plan_prices(plan=plan)
    assert [spec.meter_code for _price, spec in rows] == ["a_storage", "api_calls"]
    assert rows[0][1].package_size == 10


def test_pending_subscriptions_turn_active_on_their_first_local_day(plan):
    account = AccountFactory(timezone="Asia/Kolkata")
    sub = subscription_create(
        account=account, plan=plan, started_at=D(2024, 7, 1), now=utc(2024, 6, 15)
    )
    # 18:29 UTC on June 30 is 23:59 in Kolkata: not yet.
    assert subscription_activate_due(now=utc(2024, 6, 30, 18, 29)) == 0
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.PENDING
    assert subscription_activate_due(now=utc(2024, 6, 30, 18, 30)) == 1
    assert subscription_activate_due(now=utc(2024, 6, 30, 18, 31)) == 0
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.ACTIVE
    assert period_open(account=account, at=utc(2024, 7, 2)).start_date == D(2024, 7, 1)
