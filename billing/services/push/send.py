"""Step 2, send: housekeeping, sending pending entries in chunks and recording the provider's
answers; and the run itself (`usage_push`, under the push advisory lock)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import ProviderMeter as ProviderMeterModel
from billing.models import PushLedgerEntry
from billing.providers import get_provider
from billing.providers.base import (
    IDENTIFIER_WINDOW,
    BillingProvider,
    ItemResult,
    ItemStatus,
    UsageItem,
)
from billing.services.push.common import (
    _OUTCOME,
    MAX_ATTEMPTS,
    PUSH_LOCK_KEY,
    SEND_CHUNK,
    Kind,
    PushResult,
    Status,
    provider_customer_ensure,
    provider_meter_ensure,
    too_old_cutoff,
)
from billing.services.push.enqueue import push_ledger_enqueue
from billing.services.push.resolve import push_ledger_resolve_stale
from metering.models import Account, Meter

# --- 2. send -------------------------------------------------------------------------------------

# One statement per chunk instead of a bulk_update's CASE per row and field.
_ATTEMPT_SQL = """
UPDATE billing_pushledgerentry AS l
SET payload = CASE WHEN l.payload = '{}'::jsonb THEN v.payload ELSE l.payload END,
    attempts = l.attempts + 1,
    last_attempt_at = %s,
    first_sent_at = COALESCE(l.first_sent_at, %s)
FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, payload jsonb)
WHERE l.id = v.id AND l.status = 'pending'
"""

_RESULT_SQL = """
UPDATE billing_pushledgerentry AS l
SET status = CASE WHEN v.status = 'pending' AND l.attempts >= %s THEN 'failed' ELSE v.status END,
    error_code = v.code,
    response = v.response,
    completed_at = CASE WHEN v.status = 'pending' AND l.attempts < %s THEN NULL ELSE %s END
FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, status text, code text, response jsonb)
WHERE l.id = v.id AND l.status = 'pending'
"""


def _record_attempt(entries: list[PushLedgerEntry], now: datetime) -> None:
    rows = [{"id": e.pk, "payload": e.payload} for e in entries]
    with connection.cursor() as cursor:
        cursor.execute(_ATTEMPT_SQL, [now, now, json.dumps(rows)])


def _record_results(
    entries: list[PushLedgerEntry], results: list[ItemResult], now: datetime
) -> dict[str, int]:
    """Store the provider's answers (in the caller's transaction). Returns counts by status."""
    by_identifier = {r.identifier: r for r in results}
    rows = []
    counts: dict[str, int] = defaultdict(int)
    for entry in entries:
        result = by_identifier.get(entry.identifier)
        if result is None:
            result = ItemResult(entry.identifier, ItemStatus.RETRY, message="no answer")
        status = _OUTCOME[result.status]
        response = dict(result.response)
        response["result"] = str(result.status)
        if result.message:
            response["message"] = result.message
        rows.append(
            {"id": entry.pk, "status": str(status), "code": result.code[:64], "response": response}
        )
        if status == Status.PENDING and entry.attempts + 1 >= MAX_ATTEMPTS:
            counts[Status.FAILED] += 1
        else:
            counts[status] += 1
    with connection.cursor() as cursor:
        cursor.execute(
            _RESULT_SQL, [MAX_ATTEMPTS, MAX_ATTEMPTS, now, json.dumps(rows, default=str)]
        )
    return counts


_SUPERSEDE_SQL = """
UPDATE billing_pushledgerentry AS l
SET status = 'superseded', completed_at = %s
WHERE l.provider = %s AND l.status = 'pending' AND l.kind = 'period_to_date'
  AND EXISTS (
      SELECT 1 FROM billing_pushledgerentry n
      WHERE n.provider = l.provider AND n.kind = 'period_to_date'
        AND n.account_id = l.account_id AND n.meter_id = l.meter_id
        AND n.period_start = l.period_start AND n.seq > l.seq
  )
"""


class _Targets:
    """Customer ids and provider meters, resolved once per run."""

    def __init__(self, provider: BillingProvider) -> None:
        self.provider = provider
        self.customers: dict[int, str] = {}
        self.meters: dict[int, ProviderMeterModel] = {}

    def item(self, entry: PushLedgerEntry) -> UsageItem:
        if entry.payload:
            return UsageItem.from_payload(entry.payload)
        if entry.account_id not in self.customers:
            self.customers[entry.account_id] = provider_customer_ensure(
                provider=self.provider, account=Account.objects.get(pk=entry.account_id)
            )
        if entry.meter_id not in self.meters:
            self.meters[entry.meter_id] = provider_meter_ensure(
                provider=self.provider, meter=Meter.objects.get(pk=entry.meter_id)
            )
        item = UsageItem(
            identifier=entry.identifier,
            idempotency_key=entry.idempotency_key,
            event_name=self.meters[entry.meter_id].event_name,
            customer_id=self.customers[entry.account_id],
            value=entry.value,
            timestamp=entry.timestamp,
        )
        entry.payload = item.as_payload()
        return item


def _housekeeping(provider_name: str, now: datetime, result: PushResult) -> None:
    """Pending entries that must not be sent: too old now, or superseded by a newer
    period-to-date value of the same key."""
    pending = PushLedgerEntry.objects.filter(provider=provider_name, status=Status.PENDING)
    with transaction.atomic():
        result.too_old += pending.filter(timestamp__lt=too_old_cutoff(now)).update(
            status=Status.TOO_OLD,
            completed_at=now,
            error_code="older_than_push_window",
            response={
                "reason": "Became older than the provider's 35-day window before it was "
                "acknowledged; not sent again."
            },
        )
        with connection.cursor() as cursor:
            cursor.execute(_SUPERSEDE_SQL, [now, provider_name])
            result.superseded += cursor.rowcount


_SEND_FIELDS = (
    "pk",
    "identifier",
    "idempotency_key",
    "account_id",
    "meter_id",
    "value",
    "timestamp",
    "payload",
    "attempts",
)


def _sendable(provider_name: str, now: datetime):
    return (
        PushLedgerEntry.objects.filter(provider=provider_name, status=Status.PENDING)
        .filter(
            Q(first_sent_at__isnull=True)
            | Q(first_sent_at__gt=now - IDENTIFIER_WINDOW)
            | Q(kind=Kind.PERIOD_TO_DATE)
        )
        .only(*_SEND_FIELDS)
        .order_by("pk")
    )


def push_ledger_send(
    *,
    provider: BillingProvider,
    now: datetime | None = None,
    max_entries: int | None = None,
    chunk: int = SEND_CHUNK,
    result: PushResult | None = None,
    progress: Callable[[int], None] | None = None,
) -> PushResult:
    """Send what may be sent (see the billing.services.push docstring), a chunk at a time."""
    result = result or PushResult(provider=provider.name)
    targets = _Targets(provider)
    last_pk = 0
    done = 0
    while max_entries is None or done < max_entries:
        now_ = now or timezone.now()
        size = chunk if max_entries is None else min(chunk, max_entries - done)
        entries = list(_sendable(provider.name, now_).filter(pk__gt=last_pk)[:size])
        if not entries:
            break
        last_pk = entries[-1].pk
        items = [targets.item(entry) for entry in entries]
        with transaction.atomic():
            _record_attempt(entries, now_)
        results = provider.report_usage(items)
        with transaction.atomic():
            counts = _record_results(entries, results, now_)
        done += len(entries)
        result.attempted += len(entries)
        result.acknowledged += counts.get(Status.ACKNOWLEDGED, 0)
        result.sent += counts.get(Status.SENT, 0)
        result.too_old += counts.get(Status.TOO_OLD, 0)
        result.rejected += counts.get(Status.REJECTED, 0)
        result.retry_later += counts.get(Status.PENDING, 0)
        result.failed += counts.get(Status.FAILED, 0)
        if progress is not None:
            progress(len(entries))
    return result


# --- the run -------------------------------------------------------------------------------------


class _PushLock:
    """Session-level advisory lock: held across the provider calls (which run outside any
    transaction), released on exit or when the connection dies with the worker."""

    def __enter__(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [PUSH_LOCK_KEY])
            self.acquired = bool(cursor.fetchone()[0])
        return self.acquired

    def __exit__(self, *exc) -> None:
        if self.acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [PUSH_LOCK_KEY])


def usage_push(
    *,
    provider: BillingProvider | None = None,
    now: datetime | None = None,
    max_entries: int | None = None,
    progress: Callable[[int], None] | None = None,
    actor=None,
) -> PushResult:
    """One push run: enqueue, housekeeping, send, resolve stale entries, send what they freed.
    Safe to run twice at once (the second returns `busy`) or again after a crash."""
    provider = provider or get_provider()
    result = PushResult(provider=provider.name)
    with _PushLock() as acquired:
        if not acquired:
            result.busy = True
            return result
        result.events_drained, result.entries_created, result.too_old = push_ledger_enqueue(
            provider_name=provider.name, now=now
        )
        _housekeeping(provider.name, now or timezone.now(), result)
        push_ledger_send(
            provider=provider, now=now, max_entries=max_entries, result=result, progress=progress
        )
        before = result.stale_resent
        push_ledger_resolve_stale(provider=provider, now=now, result=result)
        if result.stale_resent > before:
            push_ledger_send(provider=provider, now=now, result=result, progress=progress)
    result.http_calls = getattr(provider, "http_calls", 0)
    return result
