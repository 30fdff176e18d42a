"""Accounts and meters: idempotent upserts, validated, with history and quarantine replay.

Both upserts are what `PUT /api/v1/accounts/{external_id}` and `PUT /api/v1/meters/{code}` do:
the body is the whole representation (a field left out takes its default), sending the same body
twice changes nothing the second time (and writes no history row), and the first creation of an
account or meter makes its quarantined events replayable and replays them once committed
(bounded, see metering.services.quarantine).
"""

from __future__ import annotations

import functools
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from metering.models import Account, Meter, UsageEvent
from metering.services.quarantine import quarantine_mark_replayable, quarantine_schedule_replay
from metering.services.rollups import rollups_rebuild_account_daily


def _save(obj, *, actor, reason: str, update_fields: list[str] | None = None) -> None:
    obj._history_user = actor
    if reason:
        obj._change_reason = reason[:100]
    obj.save(update_fields=update_fields)


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ValidationError(
            {"metadata": ValidationError("metadata must be a JSON object.", code="invalid_type")}
        )


def account_upsert(
    *,
    external_id: str,
    name: str = "",
    timezone: str = "UTC",
    currency: str = "USD",
    tier: str = "",
    metadata: dict | None = None,
    actor=None,
    reason: str = "",
) -> tuple[Account, bool]:
    """Create or update the account `external_id`; return it and whether it was created.

    Raises ValidationError (with field errors) for an invalid time zone, currency, etc.
    `reason` is recorded in the history next to the actor (e.g. which API key did it).
    """
    metadata = {} if metadata is None else metadata
    _check_metadata(metadata)
    values = {
        "name": name,
        "timezone": timezone,
        "currency": currency,
        "tier": tier,
        "metadata": metadata,
    }
    with transaction.atomic():
        account = Account.objects.select_for_update().filter(external_id=external_id).first()
        if account is None:
            candidate = Account(external_id=external_id, **values)
            candidate.full_clean(validate_unique=False, validate_constraints=False)
            try:
                with transaction.atomic():
                    _save(candidate, actor=actor, reason=reason)
            except IntegrityError:
                # Created by a concurrent request since we looked: update that one instead.
                account = Account.objects.select_for_update().get(external_id=external_id)
            else:
                marked = quarantine_mark_replayable(external_customer_id=external_id, actor=actor)
                quarantine_schedule_replay(ids=marked, actor=actor)
                return candidate, True

        changed = [f for f, value in values.items() if getattr(account, f) != value]
        if not changed:
            return account, False
        old_timezone = account.timezone
        for f in changed:
            setattr(account, f, values[f])
        account.full_clean(validate_unique=False, validate_constraints=False)
        _save(account, actor=actor, reason=reason, update_fields=[*changed, "updated_at"])
        if account.timezone != old_timezone:
            # ---- ROLLUP HOOK: the account's time zone changed ---------------------------------
            # Its daily rollups are days in the old zone. Rebuild them for the new zone here,
            # on commit (transaction.on_commit), e.g. a rollup service called with
            # (account_id=account.id, old_timezone=old_timezone). Helper C adds the call.
            # ------------------------------------------------------------------------------------
            transaction.on_commit(
                functools.partial(rollups_rebuild_account_daily, account_id=account.pk)
            )
        return account, False


def meter_upsert(
    *,
    code: str,
    name: str,
    aggregation: str,
    value_property: str = "",
    dimensions: list[str] | None = None,
    unit: str = "",
    actor=None,
    reason: str = "",
) -> tuple[Meter, bool]:
    """Create or update the meter `code`; return it and whether it was created.

    Once a meter has events its aggregation and value property are fixed: the stored values
    were computed for them (a count stores 1 per event, a sum the property), so changing either
    would silently change past usage. Create a new meter instead.
    """
    dimensions = [] if dimensions is None else dimensions
    values = {
        "name": name,
        "aggregation": aggregation,
        "value_property": value_property,
        "dimensions": dimensions,
        "unit": unit,
    }
    with transaction.atomic():
        meter = Meter.objects.select_for_update().filter(code=code).first()
        if meter is None:
            candidate = Meter(code=code, **values)
            candidate.full_clean(validate_unique=False, validate_constraints=False)
            try:
                with transaction.atomic():
                    _save(candidate, actor=actor, reason=reason)
            except IntegrityError:
                meter = Meter.objects.select_for_update().get(code=code)
            else:
                marked = quarantine_mark_replayable(meter_code=code, actor=actor)
                quarantine_schedule_replay(ids=marked, actor=actor)
                return candidate, True

        changed = [f for f, value in values.items() if getattr(meter, f) != value]
        if not changed:
            return meter, False
        fixed = [f for f in ("aggregation", "value_property") if f in changed]
        if fixed and UsageEvent.objects.filter(meter=meter).exists():
            raise ValidationError(
                {
                    f: ValidationError(
                        "This meter already has events; its %(field)s cannot change. "
                        "Create a new meter instead.",
                        code="immutable",
                        params={"field": f.replace("_", " ")},
                    )
                    for f in fixed
                }
            )
        for f in changed:
            setattr(meter, f, values[f])
        meter.full_clean(validate_unique=False, validate_constraints=False)
        _save(meter, actor=actor, reason=reason, update_fields=[*changed, "updated_at"])
        return meter, False
