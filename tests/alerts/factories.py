"""Factories for alert tests: rows as evaluation writes them, for tests of the API and admin."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory

from alerts.models import Alert, AlertRule
from tests.metering.factories import AccountFactory, MeterFactory


def default_rule(kind: str = "spike") -> AlertRule:
    return AlertRule.objects.get(code=f"default-{kind}")


class AlertFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Alert

    rule = factory.LazyFunction(default_rule)
    kind = factory.LazyAttribute(lambda o: o.rule.kind)
    account = factory.SubFactory(AccountFactory)
    meter = factory.SubFactory(MeterFactory, code="api_calls", unit="API calls")
    period_key = ""
    level = Alert.Level.CRITICAL
    day = dt.date(2024, 3, 20)
    observed = Decimal("10000")
    baseline = Decimal("1000")
    band_low = Decimal("800")
    band_high = Decimal("1200")
    multiple = Decimal("10.00")
    period_usage = Decimal("29000")
    previous_period_usage = Decimal("29000")
    projected_invoice_minor = 155_000
    currency = "USD"
    drivers = factory.LazyFunction(
        lambda: [{"dimension": "endpoint", "value": "/v1/search", "increase": "9000"}]
    )
    message = "api_calls: 10000 API calls so far, 10.00x a normal Wednesday."
    opened_at = dt.datetime(2024, 3, 20, 13, tzinfo=dt.UTC)
    evaluated_at = dt.datetime(2024, 3, 20, 13, tzinfo=dt.UTC)
