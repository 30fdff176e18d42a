"""Correcting a usage event: a new event that replaces the one it corrects.

Events are append-only, so a wrong value is fixed by a *correction*: an event of kind
`correction` whose `corrects` points at the event it replaces. From then on the original no
longer counts anywhere and the correction counts in its place, in the correction's own bucket
(its occurred_at is the original's, so that is the same hour and local day; its properties are
the original's, so the same dimension values). A *void* correction (value None and no unique
value) removes the event from usage altogether.

An event is corrected at most once; to change a correction again, correct the correction (the
chain's last event is the one that counts). Rollups pick corrections up like any other event
(the insert trigger puts them in the inbox) and recompute the buckets the original left.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation, localcontext

from django.db import transaction
from django.utils import timezone

from metering.content_hash import event_content_hash
from metering.models import Meter, UsageEvent
from metering.services.ingest import late_cutoff
from metering.services.ingest.parse import RESERVED_TRANSACTION_PREFIX

# Keeps the reason (and who gave it) with the event; a leading underscore keeps it apart from
# client properties, which the API never lets start with one in practice (and dimension keys
# are meter-defined, so it never becomes a dimension by accident).
CORRECTION_PROPERTY = "_correction"
MAX_INTEGER_DIGITS = 26  # numeric(38, 12)
DECIMAL_PLACES = 12


class CorrectionError(ValueError):
    """The correction cannot be recorded as asked; the message says why and what to do."""


def _check_value(meter: Meter, value: Decimal | None, unique_value: str) -> None:
    aggregation = meter.aggregation
    if aggregation == Meter.Aggregation.UNIQUE_COUNT:
        if value is not None:
            raise CorrectionError("A unique_count meter takes a unique value, not a number.")
        if len(unique_value) > 255:
            raise CorrectionError("A unique value is at most 255 characters.")
        return
    if unique_value:
        raise CorrectionError(f"A {aggregation} meter takes a number, not a unique value.")
    if value is None:
        return
    if not isinstance(value, Decimal):
        raise CorrectionError("Give the value as a Decimal (never a float).")
    if not value.is_finite():
        raise CorrectionError("The value must be a finite number.")
    if aggregation == Meter.Aggregation.COUNT and value != 1:
        raise CorrectionError("A count meter counts events: correct to 1 or void it (None).")
    if value and value.adjusted() >= MAX_INTEGER_DIGITS:
        raise CorrectionError(f"The value must be below 10^{MAX_INTEGER_DIGITS}.")
    with localcontext() as context:
        context.prec = MAX_INTEGER_DIGITS + DECIMAL_PLACES + 2
        try:
            exact = value.quantize(Decimal(1).scaleb(-DECIMAL_PLACES))
        except InvalidOperation as exc:  # pragma: no cover - excluded by the bound above
            raise CorrectionError("The value does not fit numeric(38, 12).") from exc
    if exact != value:
        raise CorrectionError(f"The value has more than {DECIMAL_PLACES} decimal places.")


def _root_and_depth(event: UsageEvent) -> tuple[UsageEvent, int]:
    root, depth = event, 0
    while root.corrects_id is not None:
        root = UsageEvent.objects.get(pk=root.corrects_id)
        depth += 1
    return root, depth


def _correction_transaction_id(root: UsageEvent, n: int) -> str:
    """`mo:correction:<root's id>:<n>`: in the namespace ingestion refuses to clients
    (RESERVED_TRANSACTION_PREFIX), so no client id can take it. Corrections recorded before
    kept `correction:...` ids; they stay as they are."""
    candidate = f"{RESERVED_TRANSACTION_PREFIX}correction:{root.transaction_id}:{n}"
    if len(candidate) <= 255:
        return candidate
    digest = hashlib.sha256(root.transaction_id.encode()).hexdigest()
    return f"{RESERVED_TRANSACTION_PREFIX}correction:sha256-{digest}:{n}"


def usage_event_correct(
    *,
    event: UsageEvent,
    value: Decimal | None,
    unique_value: str = "",
    reason: str,
    actor=None,
) -> UsageEvent:
    """Record a correction that replaces `event` (see the module docstring).

    `value` is the corrected decimal for sum/max/latest meters, 1 for count meters, and None
    to void the event; unique_count meters take `unique_value` ("" voids). Raises
    CorrectionError when the event was already corrected (correct that correction instead),
    when no reason is given, or when the value does not fit the meter.
    """
    reason = (reason or "").strip()
    if not reason:
        raise CorrectionError("Say why the event is corrected.")
    with transaction.atomic():
        # The row lock serialises two corrections of one event: the second sees the first.
        original = UsageEvent.objects.select_for_update().select_related("meter").get(pk=event.pk)
        existing = UsageEvent.objects.filter(corrects=original).order_by("pk").first()
        if existing is not None:
            raise CorrectionError(
                f"Event {original.pk} was already corrected by event {existing.pk}; "
                "correct the latest correction instead."
            )
        meter = original.meter
        _check_value(meter, value, unique_value)
        root, depth = _root_and_depth(original)
        properties = dict(original.properties or {})
        if meter.value_property:
            if meter.aggregation == Meter.Aggregation.UNIQUE_COUNT:
                new = unique_value or None
            else:
                new = None if value is None else str(value)
            properties[meter.value_property] = new
        properties[CORRECTION_PROPERTY] = {
            "reason": reason,
            "corrects": original.pk,
            "by": getattr(actor, "get_username", lambda: "")() if actor is not None else "",
        }
        now = timezone.now()
        correction = UsageEvent.objects.create(
            account_id=original.account_id,
            meter=meter,
            transaction_id=_correction_transaction_id(root, depth + 1),
            source=original.source,
            occurred_at=original.occurred_at,
            received_at=now,
            value=value,
            unique_value=unique_value,
            properties=properties,
            content_hash=event_content_hash(
                meter_code=meter.code, occurred_at=original.occurred_at, properties=properties
            ),
            is_late=original.occurred_at < late_cutoff(now),
            kind=UsageEvent.Kind.CORRECTION,
            corrects=original,
        )
    return correction
