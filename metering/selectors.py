"""Reads for the API: accounts, meters and API keys."""

from __future__ import annotations

from django.db.models import Model, QuerySet

from metering.models import Account, ApiKey, Meter


def _one_by(model: type[Model], column: str, value: str):
    """The row whose unique `column` is `value`, or None, through `Model.objects.raw`: every API
    request reads its account and meter (and its key) this way, and compiling the same
    one-table filter in the ORM costs about twice the query itself (~0.5 ms a read here, timed
    ad hoc in one process; bench/usage.py prints the API's latency it is part of)."""
    table = model._meta.db_table
    rows = model.objects.raw(f'SELECT * FROM "{table}" WHERE "{column}" = %s', [value])
    return next(iter(rows), None)


def account_get(*, external_id: str) -> Account | None:
    return _one_by(Account, "external_id", external_id)


def meter_get(*, code: str) -> Meter | None:
    return _one_by(Meter, "code", code)


def api_key_get(*, key_hash: str) -> ApiKey | None:
    return _one_by(ApiKey, "key_hash", key_hash)


def meter_list() -> QuerySet[Meter]:
    return Meter.objects.order_by("code")
