"""Pushing usage to the billing provider exactly once, with our own ledger as the authority.

A run (`usage_push`) takes a session-level advisory lock, so two beats or a redelivered task
never push at the same time (the second returns at once, `busy`), then:

1. **Enqueue.** Drain the push inbox (filled by an insert trigger on the event table, in the
   event's own transaction) with DELETE ... RETURNING, and write the ledger entries for those
   events in the same transaction. Nothing can be skipped: an event committed late is simply
   in the inbox later, and a drain that fails leaves its rows.

   - count and sum meters go to a provider `sum` meter, one entry per event: identifier
     `mo-e<event id>`, value 1 (count) or the event's value (sum). A correction pushes the
     difference it makes (its value minus the corrected event's; the same timestamp), which
     may be negative: Stripe takes negative values to fix usage.
   - max, unique_count and latest meters go to a provider `last` meter as the period-to-date
     value of the billing period (the stored period containing the event, else the period
     the subscription's anchor gives, else the local calendar month), recomputed from the raw
     events; a new entry `mo-g<account>-<meter>-<period start>-<seq>` only when the value
     changed. Its timestamp is now (clamped into the period and always after the previous
     one, so "last" picks the newest value).
   - zero values are not pushed.

2. **Send.** Pending entries go to the provider in chunks. The attempt (attempts,
   first_sent_at, the exact payload) is committed *before* the provider call, the answer
   *after* it. A crash in between leaves an entry pending with first_sent_at set.

The rules, in the order a run applies them:

- sent / acknowledged / too_old / rejected / superseded / failed entries are never sent again
  (only staff may put a failed entry back to pending);
- a pending entry whose timestamp is older than 35 days (less a 5-minute margin) becomes
  `too_old`, never sent: recorded, not silently dropped;
- a pending period-to-date entry with a newer entry for the same key becomes `superseded`;
- a pending entry never attempted, or first sent less than 24 hours ago, is sent with its
  original identifier, idempotency key and payload: within 24 hours the provider's dedupe
  (and Stripe's idempotency keys) make a resend count once;
- a pending event entry first sent 24 hours ago or more may not be deduplicated any more, so
  it is not blindly resent. For its (account, meter, UTC day) the provider's daily summary T
  is compared with A (our sent and acknowledged values that day) and P (the stale pending
  values): T == A + P, it was counted: acknowledged; T == A, it was not: resent (its
  24-hour window restarts); anything else: failed, for a person. While entries of that day
  are still pending inside their 24-hour window the check waits for a later run. A stale
  period-to-date entry is simply resent (a `last` meter keeps one value: a resend is
  harmless);
- answers: recorded or duplicate -> acknowledged; accepted (v2 stream, asynchronous) -> sent;
  too old -> too_old; refused -> rejected; transient -> stays pending (failed after
  MAX_ATTEMPTS).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing import periods as billing_periods
from billing.models import BillingPeriod, PushLedgerEntry, Subscription
from billing.models import ProviderMeter as ProviderMeterModel
from billing.providers import get_provider
from billing.providers.base import (
    IDENTIFIER_WINDOW,
    PUSH_WINDOW,
    BillingProvider,
    ItemResult,
    ItemStatus,
    MeterSpec,
    ProviderMisconfigured,
    UsageItem,
    utc_day_start,
)
from metering.models import Account, Meter, UsageEvent

logger = logging.getLogger(__name__)

Status = PushLedgerEntry.Status
Kind = PushLedgerEntry.Kind
A = Meter.Aggregation

# Arbitrary but fixed: the advisory lock key of the push (pg_try_advisory_lock).
PUSH_LOCK_KEY = 0x6D6F_7075_7368  # "mopush"
ENQUEUE_BATCH = 5_000
SEND_CHUNK = 1_000
MAX_ATTEMPTS = 20
# Entries this close to the 35-day edge are not sent: they could be too old on arrival.
EDGE_MARGIN = timedelta(minutes=5)
SUM_METERS = (A.COUNT, A.SUM)

_OUTCOME = {
    ItemStatus.RECORDED: Status.ACKNOWLEDGED,
    ItemStatus.DUPLICATE: Status.ACKNOWLEDGED,
    ItemStatus.ACCEPTED: Status.SENT,
    ItemStatus.TOO_OLD: Status.TOO_OLD,
    ItemStatus.REJECTED: Status.REJECTED,
    ItemStatus.RETRY: Status.PENDING,
}


@dataclass
class PushResult:
    provider: str = ""
    busy: bool = False
    events_drained: int = 0
    entries_created: int = 0
    too_old: int = 0
    superseded: int = 0
    attempted: int = 0
    acknowledged: int = 0
    sent: int = 0
    rejected: int = 0
    retry_later: int = 0
    failed: int = 0
    stale_acknowledged: int = 0
    stale_resent: int = 0
    stale_failed: int = 0
    http_calls: int = 0
    errors: list[str] = field(default_factory=list)


def too_old_cutoff(now: datetime) -> datetime:
    return now - PUSH_WINDOW + EDGE_MARGIN


def meter_spec(meter: Meter) -> MeterSpec:
    return MeterSpec(
        meter_code=meter.code,
        display_name=meter.name or meter.code,
        event_name=f"mo_{meter.code}",
        aggregation="sum" if meter.aggregation in SUM_METERS else "last",
    )


# --- customers and meters at the provider ------------------------------------------------------


def provider_customer_ensure(*, provider: BillingProvider, account: Account, actor=None) -> str:
    """The account's customer id at the provider; created there (and, for providers that keep
    it on the account, stored) if missing."""
    customer_id = provider.ensure_customer(
        external_id=account.external_id,
        name=account.name,
        existing_id=account.provider_customer_id,
    )
    if provider.stores_customer_on_account and customer_id != account.provider_customer_id:
        account.provider_customer_id = customer_id
        account._change_reason = f"Customer created at {provider.name}"
        if actor is not None:
            account._history_user = actor
        account.save(update_fields=["provider_customer_id", "updated_at"])
    return customer_id


def provider_meter_ensure(*, provider: BillingProvider, meter: Meter) -> ProviderMeterModel:
    """Our meter's mapping at the provider, creating the provider meter if needed."""
    existing = ProviderMeterModel.objects.filter(provider=provider.name, meter=meter).first()
    if existing is not None:
        return existing
    spec = meter_spec(meter)
    info = provider.ensure_meter(spec=spec)
    if info.aggregation and info.aggregation != spec.aggregation:
        raise ProviderMisconfigured(
            f"{provider.name} meter {info.provider_meter_id} for {spec.event_name} aggregates "
            f"by {info.aggregation}, but {meter.code} needs {spec.aggregation}."
        )
    mapping, _ = ProviderMeterModel.objects.get_or_create(
        provider=provider.name,
        meter=meter,
        defaults={
            "provider_meter_id": info.provider_meter_id,
            "event_name": info.event_name,
            "aggregation": spec.aggregation,
        },
    )
    return mapping


# --- 1. enqueue ----------------------------------------------------------------------------------

# DELETE ... RETURNING claims inbox rows and removes them in the caller's transaction; SKIP
# LOCKED keeps a second drainer (there should be none: the push lock) from waiting.
_DRAIN_SQL = """
DELETE FROM billing_pushinbox
WHERE event_id IN (
    SELECT event_id FROM billing_pushinbox ORDER BY event_id LIMIT %s FOR UPDATE SKIP LOCKED
)
RETURNING event_id
"""

# The period-to-date value of a max / unique_count / latest meter over [lo, hi), from the raw
# effective events (those no correction replaces), as the rollups define them.
_GAUGE_SQL = """
SELECT max(e.value),
       count(DISTINCT e.unique_value) FILTER (WHERE e.unique_value <> ''),
       (array_agg(e.value ORDER BY e.occurred_at DESC, e.id DESC)
            FILTER (WHERE e.value IS NOT NULL))[1]
FROM metering_usageevent e
WHERE e.account_id = %s AND e.meter_id = %s AND e.occurred_at >= %s AND e.occurred_at < %s
  AND NOT EXISTS (
      SELECT 1 FROM metering_usageevent c WHERE c.corrects_id = e.id AND c.corrects_id IS NOT NULL)
"""


# Count and sum meters: one entry per event, straight from the event rows (building 5,000
# model instances per batch in Python cost more than the rest of the enqueue). A correction's
# value is its own contribution minus the corrected event's (count: 1 per event with a value;
# sum: the value; a void correction contributes 0).
_EVENT_ENTRIES_SQL = """
INSERT INTO billing_pushledgerentry (
    provider, identifier, idempotency_key, kind, account_id, meter_id, event_id, value,
    timestamp, day, period_start, seq, payload, status, attempts, created_at, error_code,
    response, completed_at
)
SELECT %(provider)s, 'mo-e' || e.id, 'mo-e' || e.id, 'event', e.account_id, e.meter_id, e.id,
       d.value, e.occurred_at, (e.occurred_at AT TIME ZONE 'UTC')::date, NULL, 0, '{}'::jsonb,
       CASE WHEN old THEN 'too_old' ELSE 'pending' END, 0, %(now)s,
       CASE WHEN old THEN 'older_than_push_window' ELSE '' END,
       CASE WHEN old THEN %(too_old_response)s::jsonb ELSE '{}'::jsonb END,
       CASE WHEN old THEN %(now)s::timestamptz END
FROM metering_usageevent e
JOIN metering_meter m ON m.id = e.meter_id
LEFT JOIN metering_usageevent o ON o.id = e.corrects_id
CROSS JOIN LATERAL (
    SELECT (CASE WHEN e.value IS NULL THEN 0 WHEN m.aggregation = 'count' THEN 1 ELSE e.value END)
         - (CASE WHEN o.value IS NULL THEN 0 WHEN m.aggregation = 'count' THEN 1 ELSE o.value END)
           AS value,
           e.occurred_at < %(cutoff)s AS old
) d
WHERE e.id = ANY(%(ids)s) AND m.aggregation IN ('count', 'sum') AND d.value <> 0
ON CONFLICT (provider, identifier) DO NOTHING
RETURNING status
"""


def _gauge_value(meter: Meter, account_id: int, lo: datetime, hi: datetime) -> Decimal:
    with connection.cursor() as cursor:
        cursor.execute(_GAUGE_SQL, [account_id, meter.pk, lo, hi])
        top, distinct, latest = cursor.fetchone()
    if meter.aggregation == A.UNIQUE_COUNT:
        return Decimal(distinct or 0)
    value = top if meter.aggregation == A.MAX else latest
    return Decimal(0) if value is None else Decimal(value)


@dataclass(frozen=True)
class _GaugeKey:
    account_id: int
    meter_id: int
    period_start: date
    starts_at: datetime
    ends_at: datetime


class _PeriodFinder:
    """The billing period an instant of an account belongs to, for period-to-date values."""

    def __init__(self) -> None:
        self._stored: dict[int, list[BillingPeriod]] = {}
        self._anchor: dict[int, int] = {}

    def find(self, account: Account, at: datetime) -> billing_periods.PeriodBounds:
        stored = self._stored.get(account.pk)
        if stored is None:
            stored = list(BillingPeriod.objects.filter(account_id=account.pk))
            self._stored[account.pk] = stored
        for period in stored:
            if period.starts_at <= at < period.ends_at:
                return billing_periods.PeriodBounds(
                    period.start_date, period.end_date, period.starts_at, period.ends_at
                )
        if account.pk not in self._anchor:
            subscription = (
                Subscription.objects.filter(account_id=account.pk).order_by("-started_at").first()
            )
            self._anchor[account.pk] = subscription.billing_anchor_day if subscription else 1
        return billing_periods.period_for(
            anchor_day=self._anchor[account.pk], tz=account.timezone, at=at
        )


def _too_old_response(now: datetime) -> dict:
    return {
        "reason": "The provider accepts usage timestamps within the past 35 days only; "
        "this usage was not sent.",
        "cutoff": too_old_cutoff(now).isoformat(),
    }


def _mark_too_old(entry: PushLedgerEntry, now: datetime) -> None:
    entry.status = Status.TOO_OLD
    entry.completed_at = now
    entry.error_code = "older_than_push_window"
    entry.response = _too_old_response(now)


def _gauge_entry(
    key: _GaugeKey, meter: Meter, provider_name: str, now: datetime
) -> PushLedgerEntry | None:
    value = _gauge_value(meter, key.account_id, key.starts_at, key.ends_at)
    previous = (
        PushLedgerEntry.objects.filter(
            provider=provider_name,
            kind=Kind.PERIOD_TO_DATE,
            account_id=key.account_id,
            meter_id=key.meter_id,
            period_start=key.period_start,
        )
        .order_by("-seq")
        .first()
    )
    resendable = (Status.PENDING, Status.SENT, Status.ACKNOWLEDGED, Status.SUPERSEDED)
    if previous is not None and previous.value == value and previous.status in resendable:
        return None
    if previous is None and value == 0:
        return None
    seq = previous.seq + 1 if previous else 1
    last_second = key.ends_at - timedelta(seconds=1)
    timestamp = min(max(now, key.starts_at), last_second).replace(microsecond=0)
    if previous is not None and timestamp <= previous.timestamp:
        timestamp = previous.timestamp + timedelta(seconds=1)
    identifier = f"mo-g{key.account_id}-{key.meter_id}-{key.period_start:%Y%m%d}-{seq}"
    entry = PushLedgerEntry(
        provider=provider_name,
        identifier=identifier,
        idempotency_key=identifier,
        kind=Kind.PERIOD_TO_DATE,
        account_id=key.account_id,
        meter_id=key.meter_id,
        value=value,
        timestamp=timestamp,
        day=timestamp.astimezone(UTC).date(),
        period_start=key.period_start,
        seq=seq,
    )
    if timestamp > last_second:
        # The period is over and its last second already carries a value: the invoice is
        # the provider's to issue; the change is shown here, not pushed.
        entry.status = Status.REJECTED
        entry.completed_at = now
        entry.error_code = "period_ended"
        entry.response = {"reason": "The billing period ended; the value changed afterwards."}
    elif timestamp < too_old_cutoff(now):
        _mark_too_old(entry, now)
    return entry


def push_ledger_enqueue(
    *, provider_name: str, now: datetime | None = None, batch_size: int = ENQUEUE_BATCH
) -> tuple[int, int, int]:
    """Drain the push inbox into ledger entries. Returns (events drained, entries created,
    of which too old to send)."""
    drained = created = too_old = 0
    while True:
        now_ = now or timezone.now()
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(_DRAIN_SQL, [batch_size])
                ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return drained, created, too_old
            with connection.cursor() as cursor:
                cursor.execute(
                    _EVENT_ENTRIES_SQL,
                    {
                        "provider": provider_name,
                        "now": now_,
                        "cutoff": too_old_cutoff(now_),
                        "too_old_response": json.dumps(_too_old_response(now_)),
                        "ids": ids,
                    },
                )
                statuses = [row[0] for row in cursor.fetchall()]
            created += len(statuses)
            too_old += statuses.count(Status.TOO_OLD)
            gauge_events = (
                UsageEvent.objects.filter(pk__in=ids)
                .exclude(meter__aggregation__in=SUM_METERS)
                .select_related("meter", "account")
                .only("account", "meter", "occurred_at")
                .order_by("pk")
            )
            gauges: dict[_GaugeKey, Meter] = {}
            finder = _PeriodFinder()
            for event in gauge_events:
                bounds = finder.find(event.account, event.occurred_at)
                key = _GaugeKey(
                    event.account_id,
                    event.meter_id,
                    bounds.start_date,
                    bounds.starts_at,
                    bounds.ends_at,
                )
                gauges[key] = event.meter
            for key, meter in sorted(gauges.items(), key=lambda kv: kv[0].period_start):
                entry = _gauge_entry(key, meter, provider_name, now_)
                if entry is not None:
                    # Saved one by one: the next key of the same meter reads it as previous.
                    entry.save()
                    created += 1
                    too_old += entry.status == Status.TOO_OLD
            drained += len(ids)


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
    """Send what may be sent (see the module docstring), a chunk at a time."""
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


# --- stale entries: past the provider's 24-hour dedupe window -----------------------------------


def push_ledger_resolve_stale(
    *, provider: BillingProvider, now: datetime | None = None, result: PushResult | None = None
) -> PushResult:
    """Decide, from the provider's daily summaries, what became of pending event entries first
    sent 24 hours ago or more (see the module docstring for the rule)."""
    result = result or PushResult(provider=provider.name)
    now = now or timezone.now()
    stale = PushLedgerEntry.objects.filter(
        provider=provider.name,
        status=Status.PENDING,
        kind=Kind.EVENT,
        first_sent_at__lte=now - IDENTIFIER_WINDOW,
    )
    groups = stale.values_list("account_id", "meter_id", "day").distinct()
    for account_id, meter_id, day in groups:
        same_day = PushLedgerEntry.objects.filter(
            provider=provider.name,
            kind=Kind.EVENT,
            account_id=account_id,
            meter_id=meter_id,
            day=day,
        )
        in_window = same_day.filter(
            status=Status.PENDING, first_sent_at__gt=now - IDENTIFIER_WINDOW
        )
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


def ledger_retry_failed(*, entry_ids: Iterable[int], actor=None) -> int:
    """Staff: put failed entries back to pending (the next run sends them, same identifier)."""
    return PushLedgerEntry.objects.filter(pk__in=list(entry_ids), status=Status.FAILED).update(
        status=Status.PENDING, completed_at=None, attempts=0
    )
