"""factory-boy factories for the metering models, shared by every test package."""

from __future__ import annotations

import factory

from metering.models import Account, ApiKey, Meter
from metering.services.api_keys import api_key_create


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account
        django_get_or_create = ("external_id",)

    external_id = factory.Sequence(lambda n: f"acct_{n:04d}")
    name = factory.Sequence(lambda n: f"Customer {n}")
    timezone = "UTC"
    currency = "USD"


class MeterFactory(factory.django.DjangoModelFactory):
    """A count meter by default; pass aggregation and value_property for the others."""

    class Meta:
        model = Meter
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"meter_{n:03d}")
    name = factory.LazyAttribute(lambda o: o.code.replace("_", " ").title())
    aggregation = Meter.Aggregation.COUNT
    value_property = factory.LazyAttribute(
        lambda o: "" if o.aggregation == Meter.Aggregation.COUNT else "value"
    )
    dimensions = factory.LazyFunction(list)
    unit = ""
    active = True


def api_key_for(
    scopes: list[str] | tuple[str, ...] | str, *, name: str = "test"
) -> tuple[ApiKey, str]:
    """A fresh API key with `scopes` and its raw value (for `Authorization: Bearer <raw>`)."""
    if isinstance(scopes, str):
        scopes = [scopes]
    return api_key_create(name=name, scopes=list(scopes))
