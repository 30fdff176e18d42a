"""Step 2, send: housekeeping, sending pending entries in chunks and recording the provider's
answers; and the run itself (`usage_push`, under the push advisory lock)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import ProviderMeter as ProviderMeterModel
from billing.models import PushBatch, PushLedgerEntry
from billing.providers import get_provider
from billing.providers.base import (
    MAX_VALUE_DIGITS,
    BillingProvider,
    ItemResult,
    ItemStatus,
    ProviderUnavailable,
    UsageItem,
    next_idempotency_key,
    significant_digits,
    split_value,
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
from billing.services.push.corrections import UNSETTLED, push_corrections_settle
from billing.services.push.enqueue import push_ledger_enqueue
from billing.services.push.resolve import push_ledger_resolve_stale
from metering.account_holds import held_account_ids
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

# `key`: a new idempotency key for the next attempt when the provider saved an answer for the
# old one (a 500 it will only replay); the payload keeps the key it is sent with.
_RESULT_SQL = """
UPDATE billing_pushledgerentry AS l
SET status = CASE WHEN v.status = 'pending' AND l.attempts >= %s THEN 'failed' ELSE v.status END,
    error_code = v.code,
    response = v.response,
    completed_at = CASE WHEN v.status = 'pending' AND l.attempts < %s THEN NULL ELSE %s END,
    idempotency_key = CASE WHEN v.key <> '' THEN v.key ELSE l.idempotency_key END,
    payload = CASE WHEN v.key <> '' AND l.payload ? 'idempotency_key'
                   THEN jsonb_set(l.payload, '{idempotency_key}', to_jsonb(v.key))
                   ELSE l.payload END
FROM jsonb_to_recordset(%s::jsonb)
     AS v(id bigint, status text, code text, response jsonb, key text)
WHERE l.id = v.id AND l.status = 'pending'
"""


def _record_attempt(entries: list[PushLedgerEntry], now: datetime) -> None:
    rows = [{"id": e.pk, "payload": e.payload} for e in entries]
    with connection.cursor() as cursor:
        cursor.execute(_ATTEMPT_SQL, [now, now, json.dumps(rows)])


def _combine(identifier: str, parts: list[ItemResult]) -> ItemResult:
    """One answer for an entry sent as several parts (a value split to fit the provider's
    digits): counted only when every part is; any transient part -> send again (the counted
    parts then answer duplicate); else the first refusal."""
    if len(parts) == 1:
        return parts[0]
    statuses = {p.status for p in parts}
    counted = {ItemStatus.RECORDED, ItemStatus.DUPLICATE}
    if ItemStatus.RETRY in statuses:
        first = next(p for p in parts if p.status is ItemStatus.RETRY)
        keys = [p.next_idempotency_key for p in parts if p.next_idempotency_key]
        status, code, message = ItemStatus.RETRY, first.code, first.message
        next_key = keys[0] if keys else ""
    elif statuses <= counted:
        status, code, message, next_key = ItemStatus.RECORDED, "", "", ""
    elif statuses <= counted | {ItemStatus.ACCEPTED}:
        status, code, message, next_key = ItemStatus.ACCEPTED, "", "", ""
    else:
        first = next(p for p in parts if p.status not in counted | {ItemStatus.ACCEPTED})
        status, code, message, next_key = first.status, first.code, first.message, ""
    return ItemResult(
        identifier,
        status,
        code=code,
        message=message,
        response={"parts": [{"result": str(p.status), **p.response} for p in parts]},
        next_idempotency_key=next_key,
    )


def _record_results(
    entries: list[PushLedgerEntry], results: list[ItemResult], now: datetime
) -> dict[str, int]:
    """Store the provider's answers (in the caller's transaction). Returns counts by status."""
    by_identifier: dict[str, list[ItemResult]] = defaultdict(list)
    for r in results:
        by_identifier[r.identifier].append(r)
    rows = []
    counts: dict[str, int] = defaultdict(int)
    for entry in entries:
        parts = by_identifier.get(entry.identifier)
        if parts:
            result = _combine(entry.identifier, parts)
        else:
            result = ItemResult(entry.identifier, ItemStatus.RETRY, message="no answer")
        status = _OUTCOME[result.status]
        response = dict(result.response)
        response["result"] = str(result.status)
        if result.message:
            response["message"] = result.message
        # A new key for the entry (its parts derive theirs from it), whichever part asked.
        next_key = (
            next_idempotency_key(entry.idempotency_key)
            if status == Status.PENDING and result.next_idempotency_key
            else ""
        )
        if next_key:
            response["next_idempotency_key"] = next_key
        rows.append(
            {
                "id": entry.pk,
                "status": str(status),
                "code": result.code[:64],
                "response": response,
                "key": next_key,
            }
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

    def items(self, entry: PushLedgerEntry) -> list[UsageItem]:
        """What goes to the provider for the entry: one item, or for an event entry whose value
        has more digits than the provider takes, parts that add up to it exactly (each part's
        identifier derived from the entry's, so a resend sends the very same parts)."""
        item = self.item(entry)
        if entry.kind != Kind.EVENT or significant_digits(item.value) <= MAX_VALUE_DIGITS:
            return [item]
        parts = split_value(item.value)
        return [
            replace(
                item,
                # Every part answers under the entry's identifier; sent under its own.
                identifier=item.identifier if n == 1 else f"{item.identifier}.p{n}",
                idempotency_key=(
                    item.idempotency_key if n == 1 else f"{item.idempotency_key}.p{n}"
                ),
                value=part,
            )
            for n, part in enumerate(parts, start=1)
        ]

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
        result.too_old += pending.filter(timestamp__lt=too_old_cutoff(now, provider_name)).update(
            status=Status.TOO_OLD,
            completed_at=now,
            error_code="older_than_push_window",
            response={
                "reason": "Became older than the provider's window (Stripe: 35 days) before "
                "it was acknowledged; not sent again."
            },
        )
        with connection.cursor() as cursor:
            cursor.execute(_SUPERSEDE_SQL, [now, provider_name])
            result.superseded += cursor.rowcount


_SEND_FIELDS = (
    "pk",
    "kind",
    "identifier",
    "idempotency_key",
    "account_id",
    "meter_id",
    "value",
    "timestamp",
    "payload",
    "attempts",
)


def _sendable(provider_name: str, now: datetime, held: set[int] = frozenset()):
    from billing.providers import platform_rules

    retention = platform_rules(provider_name).key_retention
    if retention is None:
        # The platform keeps keys for good: a resend, however late, is counted once.
        return (
            PushLedgerEntry.objects.filter(provider=provider_name, status=Status.PENDING)
            .exclude(account_id__in=sorted(held))
            .exclude(UNSETTLED)
            .only(*_SEND_FIELDS)
            .order_by("pk")
        )
    return (
        PushLedgerEntry.objects.filter(provider=provider_name, status=Status.PENDING)
        # Entries of held accounts (enqueued before the hold opened) wait, pending.
        .exclude(account_id__in=sorted(held))
        # A correction goes once its value is settled against what the provider holds.
        .exclude(UNSETTLED)
        .filter(
            Q(first_sent_at__isnull=True)
            | Q(first_sent_at__gt=now - retention)
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
    settled, waiting = push_corrections_settle(
        provider_name=provider.name, now=now or timezone.now()
    )
    result.corrections_settled += settled
    result.corrections_waiting = waiting
    targets = _Targets(provider)
    last_pk = 0
    done = 0
    while max_entries is None or done < max_entries:
        now_ = now or timezone.now()
        size = chunk if max_entries is None else min(chunk, max_entries - done)
        # The held accounts, once per chunk (a hold may open or be released during a run).
        held = held_account_ids()
        entries = list(_sendable(provider.name, now_, held).filter(pk__gt=last_pk)[:size])
        if not entries:
            break
        last_pk = entries[-1].pk
        items: list[UsageItem] = []
        owner: dict[str, str] = {}
        refused: list[ItemResult] = []
        try:
            for entry in entries:
                targets.items(entry)  # customers and meters at the provider, first
        except ProviderUnavailable:
            if not provider.halted:
                raise
            _halt(provider, result)
            break
        for entry in entries:
            parts = targets.items(entry)
            if entry.kind == Kind.PERIOD_TO_DATE and any(
                significant_digits(p.value) > MAX_VALUE_DIGITS for p in parts
            ):
                # A `last` meter keeps one value: it cannot be split, and the provider would
                # refuse it. Recorded as refused, never sent (nor silently marked sent).
                refused.append(_too_many_digits(entry))
                continue
            for part in parts:
                owner[part.identifier] = entry.identifier
                items.append(part)
        with transaction.atomic():
            _record_attempt(entries, now_)
        results = provider.report_usage(items) if items else []
        results = [replace(r, identifier=owner.get(r.identifier, r.identifier)) for r in results]
        with transaction.atomic():
            counts = _record_results(entries, results + refused, now_)
            PushBatch.objects.create(
                provider=provider.name,
                sent_at=now_,
                entries=len(entries),
                first_entry_id=entries[0].pk,
                last_entry_id=entries[-1].pk,
                outcomes=dict(counts),
                halted=(provider.halted or "")[:255],
            )
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
        if provider.halted:
            _halt(provider, result)
            break
    return result


def _halt(provider: BillingProvider, result: PushResult) -> None:
    """The provider asked us to stop (e.g. a Retry-After past the cap): what is left stays
    pending for the next run, which the lock no longer blocks."""
    result.halted = provider.halted
    if provider.halted not in result.errors:
        result.errors.append(provider.halted)


def _too_many_digits(entry: PushLedgerEntry) -> ItemResult:
    return ItemResult(
        entry.identifier,
        ItemStatus.REJECTED,
        code="value_too_many_digits",
        message=f"The provider takes at most {MAX_VALUE_DIGITS} significant digits; "
        f"{entry.value.normalize():f} has more and a period-to-date value cannot be split.",
        response={"not_sent": True},
    )


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
        if result.corrections_waiting and not result.halted and max_entries is None:
            # Originals answered in this run may let waiting corrections go now.
            push_ledger_send(provider=provider, now=now, result=result, progress=progress)
        if not result.halted:
            before = result.stale_resent
            try:
                push_ledger_resolve_stale(provider=provider, now=now, result=result)
            except ProviderUnavailable:
                if not provider.halted:
                    raise
                _halt(provider, result)
            if result.stale_resent > before and not result.halted:
                push_ledger_send(provider=provider, now=now, result=result, progress=progress)
    result.http_calls = getattr(provider, "http_calls", 0)
    return result
