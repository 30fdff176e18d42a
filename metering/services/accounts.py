"""Accounts and meters: idempotent upserts, validated, with history and quarantine replay.

Both upserts are what `PUT /api/v1/accounts/{external_id}` and `PUT /api/v1/meters/{code}` do:
the body is the whole representation (a field left out takes its default), sending the same body
twice changes nothing the second time (and writes no history row), and the first creation of an
account or meter makes its quarantined events replayable and queues their replay once committed
(bounded, see metering.services.quarantine). The number queued is left on the returned object
as `replay_queued` (0 when nothing was queued) so the API can say what happens.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from metering.models import Account, Meter, UsageEvent
from metering.services.quarantine import quarantine_mark_replayable, quarantine_schedule_replay
from metering.tasks import account_rollups_rebuild


def _save(obj, *, actor, reason: str, update_fields: list[str] | None = None) -> None:
    obj._history_user = actor
    if reason:
        obj._change_reason = reason[:100]
    obj.save(update_fields=update_fields)


def _lock_or_create(model, *, lookup: dict, values: dict, replayable: dict, actor, reason: str):
    """The row for `lookup`, locked for update, and False; or a new row from `values` and True.

    A row created concurrently since we looked is locked and returned instead. A new row makes
    its quarantined events (`replayable` filter) replayable and replays them on commit.
    """
    obj = model.objects.select_for_update().filter(**lookup).first()
    if obj is not None:
        obj.replay_queued = 0
        return obj, False
    candidate = model(**lookup, **values)
    candidate.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            _save(candidate, actor=actor, reason=reason)
    except IntegrityError:
        obj = model.objects.select_for_update().get(**lookup)
        obj.replay_queued = 0
        return obj, False
    marked = quarantine_mark_replayable(**replayable, actor=actor)
    candidate.replay_queued = quarantine_schedule_replay(ids=marked, actor=actor)
    return candidate, True


def _apply(obj, *, values: dict, changed: list[str], actor, reason: str) -> None:
    for field in changed:
        setattr(obj, field, values[field])
    obj.full_clean(validate_unique=False, validate_constraints=False)
    _save(obj, actor=actor, reason=reason, update_fields=[*changed, "updated_at"])


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
        account, created = _lock_or_create(
            Account,
            lookup={"external_id": external_id},
            values=values,
            replayable={"external_customer_id": external_id},
            actor=actor,
            reason=reason,
        )
        changed = [] if created else [f for f, v in values.items() if getattr(account, f) != v]
        if changed:
            _apply(account, values=values, changed=changed, actor=actor, reason=reason)
        if "timezone" in changed:
            # Its daily rollups are days in the old zone: a task rebuilds them once this commits
            # (a rebuild reads every event of the account; not for the request to wait on).
            account_rollups_rebuild.delay_on_commit(account_id=account.pk)
        return account, created


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
        meter, created = _lock_or_create(
            Meter,
            lookup={"code": code},
            values=values,
            replayable={"meter_code": code},
            actor=actor,
            reason=reason,
        )
        changed = [] if created else [f for f, v in values.items() if getattr(meter, f) != v]
        if not changed:
            return meter, created
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
        _apply(meter, values=values, changed=changed, actor=actor, reason=reason)
        return meter, False
