"""One row (or more) in every admin-registered model, with values as wide as real ones.

For the changelist width test: an empty table fits anywhere. Existing factories seed the
domain's own shape (tests.metering / billing / alerts factories); every model still empty after
that gets a row filled field by field, with identifiers as long as real ones (hash-like,
unbreakable strings), amounts in the millions and times now.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal

from django.contrib import admin
from django.db import IntegrityError, models, transaction
from django.utils import timezone

WORDS = "Northwind Traders usage export"
# As long as a Stripe identifier: no space for the browser to break at.
TOKEN = "7f3a9c2e41b84d0f9a6c1e"
SPECIAL = {
    "timezone": "America/Los_Angeles",
    "currency": "USD",
    "email": "support.agent@example-customer.com",
    "url": "https://hooks.example-customer.com/meterops/webhooks/usage-events",
    "username": "support-agent",
    "external_id": "northwind-traders-eu-",
    "code": "api_calls_",
    "owner_key": "account:northwind-traders-eu-",
}
_serial = itertools.count(1)
TEXTY = ("name", "title", "description", "reason", "message", "note", "summary", "comment")


def _later(name: str) -> bool:
    return any(word in name for word in ("end", "until", "last", "finished", "released"))


def _value(field: models.Field, model, n: int):
    if field.choices:
        return field.choices[0][0]
    name = field.name
    if isinstance(field, models.JSONField):
        return field.get_default() if field.has_default() else {}
    if isinstance(field, models.EmailField):
        return SPECIAL["email"]
    if isinstance(field, models.URLField):
        return SPECIAL["url"]
    if isinstance(field, models.CharField | models.TextField):
        if name in SPECIAL:
            text = SPECIAL[name]
        elif any(word in name for word in TEXTY) or isinstance(field, models.TextField):
            text = WORDS
        elif name.endswith(("_id", "identifier", "hash", "_key")) or name == "identifier":
            text = f"{name[:3]}_{TOKEN}"
        else:
            text = f"{name.replace('_', '-')}-"
        if name not in ("timezone", "currency", "url", "email"):
            text = f"{text}{n}"
        return text[-field.max_length :] if field.max_length else text
    if isinstance(field, models.BooleanField):
        return field.get_default() if field.has_default() else False
    if isinstance(field, models.SmallIntegerField | models.PositiveSmallIntegerField):
        return 12
    if isinstance(field, models.IntegerField):
        return 1_234_567 + n
    if isinstance(field, models.DecimalField) and "rate" in name:
        return Decimal("0.25")
    if isinstance(field, models.DecimalField):
        whole = "1234567"[: min(field.max_digits - field.decimal_places, 7)] or "0"
        places = "5" * min(field.decimal_places, 2)
        return Decimal(f"{whole}.{places}" if places else whole)
    if isinstance(field, models.FloatField):
        return 1.5
    if isinstance(field, models.DateTimeField):
        return timezone.now() + dt.timedelta(days=30 if _later(name) else -3, hours=-n)
    if isinstance(field, models.DateField):
        return timezone.now().date() + dt.timedelta(days=30 if _later(name) else -3 - n)
    if isinstance(field, models.DurationField):
        return dt.timedelta(seconds=95)
    if isinstance(field, models.UUIDField):
        return uuid.uuid4()
    if isinstance(field, models.GenericIPAddressField):
        return "203.0.113.17"
    if isinstance(field, models.BinaryField):
        return b"\x00"
    if field.has_default():
        return field.get_default()
    raise TypeError(f"no value for {model.__name__}.{name} ({type(field).__name__})")


def make(model, *, _depth: int = 0, **overrides):
    """A new saved row of `model` with every field filled (but `overrides`); related rows
    reused or made."""
    n = next(_serial)
    kwargs = dict(overrides)
    for field in model._meta.concrete_fields:
        if field.name in overrides:
            continue
        if field.primary_key and isinstance(field, models.AutoField):
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        if field.is_relation:
            target = field.related_model
            if field.null and _depth > 1:
                continue
            if isinstance(field, models.OneToOneField):
                kwargs[field.name] = make(target, _depth=_depth + 1)
            else:
                kwargs[field.name] = target._default_manager.first() or make(
                    target, _depth=_depth + 1
                )
            continue
        kwargs[field.name] = _value(field, model, n)
    obj = model(**kwargs)
    with transaction.atomic():
        obj.save()
    return obj


def _rows_the_generic_fill_cannot_make() -> None:
    """Rows whose constraints tie fields together (the migrations make them, but a
    transactional test before this one may have flushed them)."""
    from adjustments.models import Adjustment
    from alerts.models import AlertRule

    if not Adjustment.objects.exists():  # the approver may not be the requester (a CHECK)
        make(Adjustment, approved_by=None, requested_by_key=None)
    if not AlertRule.objects.exists():
        AlertRule.objects.create(
            code="default-spike", name="Usage spike", kind=AlertRule.Kind.SPIKE
        )


def fill_every_admin_model(rows: int = 1) -> dict[str, str]:
    """Make sure every registered model has at least `rows` rows; returns what failed, why."""
    _rows_the_generic_fill_cannot_make()
    failed = {}
    for model in admin.site._registry:
        missing = rows - model._default_manager.count()
        for _ in range(max(missing, 0)):
            try:
                make(model)
            except (IntegrityError, TypeError, ValueError) as exc:
                failed[model._meta.label] = f"{type(exc).__name__}: {exc}"[:300]
                break
    return failed
