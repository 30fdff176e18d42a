"""Step 1, enqueue: drain metering's rolled-up feed into ledger entries (one per event for count
and sum meters; period-to-date gauge entries for max, unique_count and latest meters)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from billing import periods as billing_periods
from billing.models import BillingPeriod, PushLedgerEntry, Subscription
from billing.services.installation import installation_id
from billing.services.push.common import ENQUEUE_BATCH, SUM_METERS, Kind, Status, too_old_cutoff
from metering.account_holds import held_account_ids
from metering.models import Account, Meter, UsageEvent
from metering.rollup_selectors import usage_gauge_from_events
from metering.services.rolled_up_feed import rolled_up_events_claim

# --- 1. enqueue ----------------------------------------------------------------------------------

# Count and sum meters: one entry per event, straight from the event rows (building 5,000
# model instances per batch in Python cost more than the rest of the enqueue). A correction's
# value here is provisional (its own contribution minus the corrected event's; count: 1 per
# event with a value; sum: the value; a void correction contributes 0): it is settled against
# what the provider actually holds before it is first sent (billing.services.push.corrections).
_EVENT_ENTRIES_SQL = """
INSERT INTO billing_pushledgerentry (
    provider, identifier, idempotency_key, kind, account_id, meter_id, event_id, value,
    timestamp, day, period_start, seq, payload, status, attempts, created_at, error_code,
    response, completed_at, corrects_event_id
)
SELECT %(provider)s, %(prefix)s || e.id, %(prefix)s || e.id, 'event', e.account_id, e.meter_id, e.id,
       d.value, e.occurred_at, (e.occurred_at AT TIME ZONE 'UTC')::date, NULL, 0, '{}'::jsonb,
       CASE WHEN old THEN 'too_old' ELSE 'pending' END, 0, %(now)s,
       CASE WHEN old THEN 'older_than_push_window' ELSE '' END,
       CASE WHEN old THEN %(too_old_response)s::jsonb ELSE '{}'::jsonb END,
       CASE WHEN old THEN %(now)s::timestamptz END, e.corrects_id
FROM metering_usageevent e
JOIN metering_meter m ON m.id = e.meter_id
LEFT JOIN metering_usageevent o ON o.id = e.corrects_id
CROSS JOIN LATERAL (
    SELECT (CASE WHEN e.value IS NULL THEN 0 WHEN m.aggregation = 'count' THEN 1 ELSE e.value END)
         - (CASE WHEN o.value IS NULL THEN 0 WHEN m.aggregation = 'count' THEN 1 ELSE o.value END)
           AS value,
           e.occurred_at < %(cutoff)s AS old
) d
WHERE e.id = ANY(%(ids)s) AND m.aggregation IN ('count', 'sum')
  AND (d.value <> 0 OR e.corrects_id IS NOT NULL)
ON CONFLICT (provider, identifier) DO NOTHING
RETURNING status
"""


def _gauge_value(meter: Meter, account_id: int, lo: datetime, hi: datetime) -> Decimal:
    # The period-to-date value, read through metering's selector (metering owns its tables).
    return usage_gauge_from_events(meter=meter, account_id=account_id, start=lo, end=hi)


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


def _too_old_response(now: datetime, provider_name: str | None = None) -> dict:
    return {
        "reason": "The provider accepts usage timestamps within its window only "
        "(Stripe: the past 35 days); this usage was not sent.",
        "cutoff": too_old_cutoff(now, provider_name).isoformat(),
    }


def _mark_too_old(entry: PushLedgerEntry, now: datetime) -> None:
    entry.status = Status.TOO_OLD
    entry.completed_at = now
    entry.error_code = "older_than_push_window"
    entry.response = _too_old_response(now, entry.provider)


def _gauge_entry(
    key: _GaugeKey, meter: Meter, provider_name: str, now: datetime, installation: str
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
    identifier = (
        f"mo-{installation}-g{key.account_id}-{key.meter_id}-{key.period_start:%Y%m%d}-{seq}"
    )
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
    elif timestamp < too_old_cutoff(now, provider_name):
        _mark_too_old(entry, now)
    return entry


def push_ledger_enqueue(
    *, provider_name: str, now: datetime | None = None, batch_size: int = ENQUEUE_BATCH
) -> tuple[int, int, int]:
    """Drain the rolled-up feed into ledger entries, leaving the events of accounts whose
    billing is held in the feed. Returns (events drained, entries created, of which too old
    to send)."""
    drained = created = too_old = 0
    installation = installation_id()
    while True:
        now_ = now or timezone.now()
        with transaction.atomic():
            # Claimed from metering's rolled-up feed (DELETE ... RETURNING, in this
            # transaction): events reach the ledger once, and only once they are in the rollups.
            # Held accounts' events stay in the feed until their hold is released (the held
            # ids: one query per batch).
            ids = rolled_up_events_claim(limit=batch_size, skip_accounts=held_account_ids())
            if not ids:
                return drained, created, too_old
            with connection.cursor() as cursor:
                cursor.execute(
                    _EVENT_ENTRIES_SQL,
                    {
                        "provider": provider_name,
                        "prefix": f"mo-{installation}-e",
                        "now": now_,
                        "cutoff": too_old_cutoff(now_, provider_name),
                        "too_old_response": json.dumps(_too_old_response(now_, provider_name)),
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
                entry = _gauge_entry(key, meter, provider_name, now_, installation)
                if entry is not None:
                    # Saved one by one: the next key of the same meter reads it as previous.
                    entry.save()
                    created += 1
                    too_old += entry.status == Status.TOO_OLD
            drained += len(ids)
