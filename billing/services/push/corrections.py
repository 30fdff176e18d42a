"""Corrections at the provider: send what changes what the provider *holds*.

A correction replaces an event. For a sum meter the provider keeps every value we sent, so a
correction is pushed as a difference: its own contribution minus what the provider holds for
the event it corrects. What the provider holds depends on what became of that event's entry,
so the difference is settled just before the correction's entry is first sent (earlier runs
may have changed the original's entry), never at enqueue time:

- original acknowledged or sent: the provider holds the original's contribution (for an
  original that was itself a correction, the corrected value it stood for): send the
  difference;
- original pending and never attempted: it will never be sent now (superseded); the provider
  holds what it held before the original (nothing, for a first event): send the full value;
- original superseded, too old or rejected (never held): as above, send against what the
  provider held before it;
- original pending with an attempt whose answer we do not know yet, or failed (a person
  decides; *Send failed entries again* may send it): the correction waits, pending, for a
  later run;
- no entry for the original (its contribution was zero): the provider holds that zero.

A settled difference of zero is not sent (the entry becomes superseded, with the reason).
Period-to-date meters need none of this: their values are recomputed from the effective events.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Q

from billing.models import PushLedgerEntry
from billing.services.push.common import Kind, Status
from metering.models import Meter, UsageEvent

_NEVER_HELD = (Status.SUPERSEDED, Status.TOO_OLD, Status.REJECTED)


class _Wait(Exception):
    """The provider's holding for the original is not known yet."""


def _contribution(event: UsageEvent, aggregation: str) -> Decimal:
    if event.value is None:
        return Decimal(0)
    return Decimal(1) if aggregation == Meter.Aggregation.COUNT else event.value


# A correction entry whose value is not settled yet: never attempted (its payload, fixed at the
# first attempt, is empty) and no basis recorded.
UNSETTLED = Q(kind=Kind.EVENT, corrects_event_id__isnull=False, attempts=0, payload={}) & ~Q(
    response__has_key="correction_basis"
)


def unsettled_corrections():
    return PushLedgerEntry.objects.filter(UNSETTLED, status=Status.PENDING)


class _Holdings:
    def __init__(self, provider_name: str, aggregation: str, now: datetime) -> None:
        self.provider_name = provider_name
        self.aggregation = aggregation
        self.now = now
        self.superseded: list[int] = []

    def held(self, event_id: int | None, replaced_by: str) -> tuple[Decimal, list[dict]]:
        """What the provider holds for the chain up to `event_id`, and how we know."""
        if event_id is None:
            return Decimal(0), []
        event = UsageEvent.objects.only("id", "value", "corrects_id").get(pk=event_id)
        entry = (
            PushLedgerEntry.objects.filter(provider=self.provider_name, event_id=event_id)
            .only("id", "identifier", "status", "attempts", "first_sent_at", "value")
            .first()
        )
        contribution = _contribution(event, self.aggregation)
        if entry is None:
            return contribution, [{"event": event_id, "entry": None, "holds": str(contribution)}]
        step = {"event": event_id, "entry": entry.identifier, "status": entry.status}
        if entry.status in PushLedgerEntry.DONE:
            return contribution, [{**step, "holds": str(contribution)}]
        if entry.status == Status.PENDING and entry.attempts == 0 and not entry.first_sent_at:
            # Never sent: it will not be now; the correction carries the value instead.
            PushLedgerEntry.objects.filter(pk=entry.pk, status=Status.PENDING).update(
                status=Status.SUPERSEDED,
                completed_at=self.now,
                error_code="replaced_by_correction",
                response={
                    "reason": "Corrected before it was sent; the correction carries the value.",
                    "replaced_by": replaced_by,
                },
            )
            step["status"] = Status.SUPERSEDED
        elif entry.status == Status.PENDING:
            raise _Wait(f"{entry.identifier} is pending with an attempt not answered yet")
        elif entry.status == Status.FAILED:
            raise _Wait(f"{entry.identifier} failed: a person decides (send it again or not)")
        elif entry.status not in _NEVER_HELD:  # pragma: no cover - every status is listed
            raise _Wait(f"{entry.identifier} is {entry.status}")
        before, steps = self.held(event.corrects_id, replaced_by)
        return before, [{**step, "holds": "nothing"}, *steps]


def push_corrections_settle(*, provider_name: str, now: datetime) -> tuple[int, int]:
    """Settle the value of pending correction entries not sent yet (see the module docstring).
    Returns (settled, waiting). Runs under the push lock, before the send."""
    settled = waiting = 0
    entries = list(
        unsettled_corrections()
        .filter(provider=provider_name)
        .select_related("meter", "event")
        .order_by("pk")
    )
    for entry in entries:
        correction = entry.event
        holdings = _Holdings(provider_name, entry.meter.aggregation, now)
        with transaction.atomic():
            try:
                held, steps = holdings.held(entry.corrects_event_id, entry.identifier)
            except _Wait as wait:
                waiting += 1
                PushLedgerEntry.objects.filter(pk=entry.pk).update(
                    response={"waiting_for_original": str(wait), "checked_at": now.isoformat()}
                )
                continue
            contribution = _contribution(correction, entry.meter.aggregation)
            value = contribution - held
            basis = {
                "correction_contributes": str(contribution),
                "provider_holds": str(held),
                "chain": steps,
            }
            fields: dict = {"value": value, "response": {"correction_basis": basis}}
            if value == 0:
                fields.update(
                    status=Status.SUPERSEDED,
                    completed_at=now,
                    error_code="nothing_to_send",
                    response={
                        "correction_basis": basis,
                        "reason": "The provider already holds the corrected value.",
                    },
                )
            PushLedgerEntry.objects.filter(pk=entry.pk, status=Status.PENDING).update(**fields)
            settled += 1
    return settled, waiting
