"""Factories for billing tests (and the metering rows they hang off)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory

from billing.models import BillingPeriod, Plan, Price, Subscription
from metering.models import Account, Meter


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    external_id = factory.Sequence(lambda n: f"billing-acct-{n}")
    name = factory.Sequence(lambda n: f"Billing Customer {n}")
    timezone = "UTC"
    currency = "USD"


class MeterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Meter

    code = factory.Sequence(lambda n: f"billing_meter_{n}")
    name = factory.Sequence(lambda n: f"Meter {n}")
    aggregation = Meter.Aggregation.COUNT
    unit = "API calls"


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan

    code = factory.Sequence(lambda n: f"plan-{n}")
    name = factory.Sequence(lambda n: f"Plan {n}")
    currency = "USD"
    flat_fee_minor = 0
    minimum_commitment_minor = 0


class PriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Price

    plan = factory.SubFactory(PlanFactory)
    meter = factory.SubFactory(MeterFactory)
    model = Price.PricingModel.PER_UNIT
    unit_price = Decimal("0.0004")


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """A bare row; tests that need periods use billing.services.subscription_create."""

    class Meta:
        model = Subscription

    account = factory.SubFactory(AccountFactory)
    plan = factory.SubFactory(PlanFactory)
    started_at = dt.date(2024, 1, 15)
    billing_anchor_day = factory.LazyAttribute(lambda o: o.started_at.day)
    status = Subscription.Status.ACTIVE


class BillingPeriodFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BillingPeriod

    subscription = factory.SubFactory(SubscriptionFactory)
    account = factory.SelfAttribute("subscription.account")
    start_date = dt.date(2024, 1, 15)
    end_date = dt.date(2024, 2, 15)
    timezone = "UTC"
    starts_at = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)
    ends_at = dt.datetime(2024, 2, 15, tzinfo=dt.UTC)
    currency = "USD"
