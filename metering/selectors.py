"""Reads for the API: accounts and meters."""

from __future__ import annotations

from django.db.models import QuerySet

from metering.models import Account, Meter


def account_get(*, external_id: str) -> Account | None:
    return Account.objects.filter(external_id=external_id).first()


def meter_get(*, code: str) -> Meter | None:
    return Meter.objects.filter(code=code).first()


def meter_list() -> QuerySet[Meter]:
    return Meter.objects.order_by("code")
