"""Stale entries past the provider's 24-hour dedupe window, decided from its daily summaries;
and staff putting failed entries back to pending."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import PushLedgerChange, PushLedgerEntry
from billing.providers.base import BillingProvider, utc_day_start
from billing.services.push.common import (
    Kind,
    PushResult,
    Status,
    provider_customer_ensure,
    provider_meter_ensure,
)
from metering.account_holds import held_account_ids
from metering.models import Account, Meter

# --- stale entries: past the provider's 24-hour dedupe window -----------------------------------


def push_ledger_resolve_stale(
    *, provider: BillingProvider, now: datetime | None = None, result: PushResult | None = None
) -> PushResult:
    """Decide, from the provider's daily summaries, what became of pending event entries first
    sent 24 hours ago or more (see the billing.services.push docstring for the rule)."""
    result = result or PushResult(provider=provider.name)
    now = now or timezone.now()
    window = provider.rules.key_retention
    if window is None:
        return result  # keys kept for good: stale entries are simply sent again
    stale = PushLedgerEntry.objects.filter(
        provider=provider.name,
        status=Status.PENDING,
        kind=Kind.EVENT,
        first_sent_at__lte=now - window,
        # A held account's entries are decided (and perhaps resent) once its hold is released.
    ).exclude(account_id__in=sorted(held_account_ids()))
    groups = stale.values_list("account_id", "meter_id", "day").distinct()
    for account_id, meter_id, day in groups:
        same_day = PushLedgerEntry.objects.filter(
            provider=provider.name,
            kind=Kind.EVENT,
            account_id=account_id,
            meter_id=meter_id,
            day=day,
        )
        in_window = same_day.filter(status=Status.PENDING, first_sent_at__gt=now - window)
        if in_window.exists():
            continue  # their answers would change the arithmetic: decide on a later run
        account = Account.objects.get(pk=account_id)
        meter = Meter.objects.get(pk=meter_id)
        mapping = provider_meter_ensure(provider=provider, meter=meter)
        customer_id = provider_customer_ensure(provider=provider, account=account)
        start = utc_day_start(datetime(day.year, day.month, day.day, tzinfo=UTC))
        summaries = provider.list_meter_event_summaries(
            provider_meter_id=mapping.provider_meter_id,
            customer_id=customer_id,
            start=start,
            end=start + timedelta(days=1),
        )
        provider_total = sum((s.value for s in summaries), Decimal(0))
        done_total = same_day.filter(status__in=PushLedgerEntry.DONE).aggregate(t=Sum("value"))[
            "t"
        ] or Decimal(0)
        group = stale.filter(account_id=account_id, meter_id=meter_id, day=day)
        pending_total = group.aggregate(t=Sum("value"))["t"] or Decimal(0)
        evidence = {
            "provider_day_total": str(provider_total),
            "ledger_done_total": str(done_total),
            "stale_pending_total": str(pending_total),
            "checked_at": now.isoformat(),
        }
        with transaction.atomic():
            if provider_total == done_total + pending_total:
                result.stale_acknowledged += group.update(
                    status=Status.ACKNOWLEDGED,
                    completed_at=now,
                    response={"resolved_by": "provider_summary", "counted": True, **evidence},
                )
            elif provider_total == done_total:
                result.stale_resent += group.update(
                    first_sent_at=now,
                    response={"resolved_by": "provider_summary", "counted": False, **evidence},
                )
            else:
                result.stale_failed += group.update(
                    status=Status.FAILED,
                    completed_at=now,
                    error_code="ambiguous_after_window",
                    response={"resolved_by": "provider_summary", "ambiguous": True, **evidence},
                )
    return result


RETRY_REASON = "Send failed entries again"


def ledger_retry_failed(*, entry_ids: Iterable[int], actor=None, reason: str = RETRY_REASON) -> int:
    """Staff: put failed entries back to pending (the next run sends them, same identifier).
    Each entry put back gets a PushLedgerChange with the acting user and the reason."""
    now = timezone.now()
    with transaction.atomic():
        entries = list(
            PushLedgerEntry.objects.select_for_update()
            .filter(pk__in=list(entry_ids), status=Status.FAILED)
            .only("pk", "status", "attempts", "completed_at", "error_code")
            .order_by("pk")
        )
        if not entries:
            return 0
        PushLedgerEntry.objects.filter(pk__in=[e.pk for e in entries]).update(
            status=Status.PENDING, completed_at=None, attempts=0
        )
        user = actor if getattr(actor, "pk", None) else None
        PushLedgerChange.objects.bulk_create(
            PushLedgerChange(
                entry_id=entry.pk,
                changed_at=now,
                source=PushLedgerChange.Source.STAFF,
                user=user,
                reason=(reason or RETRY_REASON)[:255],
                changes={
                    "status": [entry.status, Status.PENDING],
                    "attempts": [entry.attempts, 0],
                    "completed_at": [entry.completed_at, None],
                    "error_code": [entry.error_code, entry.error_code],
                },
            )
            for entry in entries
        )
    return len(entries)
