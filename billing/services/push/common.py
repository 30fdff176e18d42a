"""What every step of the push shares: statuses, limits, the run's result, meter specs, and
the account's customer and meter's mapping at the provider."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from billing.models import ProviderCustomer, PushLedgerEntry
from billing.models import ProviderMeter as ProviderMeterModel
from billing.providers.base import (
    PUSH_WINDOW,
    BillingProvider,
    ItemStatus,
    MeterSpec,
    ProviderMisconfigured,
)
from metering.models import Account, Meter

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
    corrections_settled: int = 0
    corrections_waiting: int = 0
    # Why the run stopped early (the provider asked us to wait longer than we may).
    halted: str = ""
    errors: list[str] = field(default_factory=list)


def too_old_cutoff(now: datetime, provider_name: str | None = None) -> datetime:
    """Usage older than this is not sent: the platform's accepted window (its
    PlatformRules.past_window, or its backfill_window where the platform takes older usage
    by a backfill; Stripe's 35 days when no provider is named) less a margin."""
    window = PUSH_WINDOW
    if provider_name is not None:
        from billing.providers import platform_rules

        window = platform_rules(provider_name).oldest_accepted
        if window is None:
            return datetime.min.replace(tzinfo=now.tzinfo)
    return now - window + EDGE_MARGIN


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
    provider_customer_record(provider=provider, account=account, customer_id=customer_id)
    return customer_id


def provider_customer_record(*, provider: BillingProvider, account: Account, customer_id: str):
    """Keep the account's customer at the platform in the mapping the admin shows (a new row,
    or the id changed: a history row with the reason)."""
    if provider.customer_by_external_id:
        matched_by = "external_id"
    elif provider.stores_customer_on_account:
        matched_by = "stored_id"
    else:
        matched_by = "derived"
    mapping = ProviderCustomer.objects.filter(provider=provider.name, account=account).first()
    if mapping is None:
        mapping = ProviderCustomer(provider=provider.name, account=account)
        mapping._change_reason = f"Customer resolved at {provider.name} by the push"
    elif mapping.provider_customer_id == customer_id and mapping.matched_by == matched_by:
        return mapping
    else:
        mapping._change_reason = f"Customer id changed at {provider.name}"
    mapping.provider_customer_id = customer_id
    mapping.matched_by = matched_by
    mapping.save()
    return mapping


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
