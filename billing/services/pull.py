"""Pulling what the billing provider recorded, for reconciliation.

- Meter event summaries per customer, provider meter and UTC day (every page), stored as
  ProviderUsageSummary rows, one per (provider, account, meter, day). The pairs pulled are
  those with ledger entries in the window, plus those already holding summaries there (so a
  day the provider no longer reports is set to 0, not left stale).
- Invoices with their line quantities, stored as ProviderInvoice and ProviderInvoiceLine
  (lines mapped to our meter through the adapter, or through Price.provider_price_id).

Every store is an upsert: pulling twice stores the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing.models import (
    BillingPeriod,
    Price,
    ProviderInvoice,
    ProviderInvoiceLine,
    ProviderMeter,
    ProviderUsageSummary,
    PushLedgerEntry,
)
from billing.providers import get_provider
from billing.providers.base import BillingProvider, InvoiceData
from metering.models import Account, Meter

logger = logging.getLogger(__name__)

DEFAULT_DAYS = 3
INVOICE_LOOKBACK = timedelta(days=60)


@dataclass
class PullResult:
    provider: str = ""
    since: date | None = None
    until: date | None = None
    pairs: int = 0
    summaries_stored: int = 0
    summaries_zeroed: int = 0
    invoices: int = 0
    invoice_lines: int = 0
    skipped_no_customer: int = 0
    http_calls: int = 0
    errors: list[str] = field(default_factory=list)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def provider_customer_lookup(provider: BillingProvider, account: Account) -> str:
    """The account's id at the provider, without creating one (a pull never creates)."""
    if provider.stores_customer_on_account:
        return account.provider_customer_id
    if provider.customer_by_external_id:
        return provider.lookup_customer(
            external_id=account.external_id, existing_id=account.provider_customer_id
        )
    # Derived from the account (the simulated provider): nothing to create.
    return provider.ensure_customer(
        external_id=account.external_id,
        name=account.name,
        existing_id=account.provider_customer_id,
    )


def pull_pairs(
    *,
    provider_name: str,
    since: date,
    until: date,
    account_ids: Iterable[int] | None = None,
    ledger_provider: str | None = None,
) -> list[tuple[int, int]]:
    """(account id, meter id) pairs to pull summaries for over UTC days [since, until): those
    in the push ledger of `ledger_provider` (the provider itself, or for a read-only secondary
    platform the primary whose usage it should also hold) and those already stored."""
    ledger = PushLedgerEntry.objects.filter(
        provider=ledger_provider or provider_name, day__gte=since, day__lt=until
    )
    stored = ProviderUsageSummary.objects.filter(
        provider=provider_name, day__gte=since, day__lt=until
    )
    if account_ids is not None:
        ids = list(account_ids)
        ledger = ledger.filter(account_id__in=ids)
        stored = stored.filter(account_id__in=ids)
    pairs = set(ledger.values_list("account_id", "meter_id").distinct())
    pairs |= set(stored.values_list("account_id", "meter_id").distinct())
    return sorted(pairs)


def provider_summaries_pull(
    *,
    provider: BillingProvider,
    account: Account,
    meter: Meter,
    since: date,
    until: date,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Pull and store one pair's daily summaries over [since, until). Returns (stored,
    zeroed). Raises LookupError if the meter has no provider meter yet (nothing pushed)."""
    now = now or timezone.now()
    mapping = ProviderMeter.objects.filter(provider=provider.name, meter=meter).first()
    if mapping is None and provider.read_only:
        mapping = _secondary_meter(provider, meter)
    if mapping is None:
        raise LookupError(f"{meter.code} has no {provider.name} meter yet.")
    customer_id = provider_customer_lookup(provider, account)
    if not customer_id:
        raise LookupError(f"{account.external_id} has no {provider.name} customer yet.")
    by_day: dict[date, Decimal] = {}
    period_window = provider.rules.read_window == "period"
    for summary in provider.list_meter_event_summaries(
        provider_meter_id=mapping.provider_meter_id,
        customer_id=customer_id,
        start=_midnight(since),
        end=_midnight(until),
    ):
        day = summary.start.astimezone(UTC).date()
        # A platform that reads back per billing period only (Lago) answers each period that
        # overlaps [since, until) whole: it is kept on the period's first day, wherever the
        # pull started, so a later pull rewrites the same row.
        if (since <= day or period_window) and day < until:
            by_day[day] = by_day.get(day, Decimal(0)) + summary.value
    rows = [
        ProviderUsageSummary(
            provider=provider.name,
            account=account,
            meter=meter,
            provider_meter_id=mapping.provider_meter_id,
            day=day,
            value=value,
            pulled_at=now,
        )
        for day, value in sorted(by_day.items())
    ]
    with transaction.atomic():
        ProviderUsageSummary.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["provider", "account", "meter", "day"],
            update_fields=["value", "pulled_at", "provider_meter_id"],
        )
        zeroed = (
            ProviderUsageSummary.objects.filter(
                provider=provider.name, account=account, meter=meter, day__gte=since, day__lt=until
            )
            .exclude(day__in=list(by_day))
            .exclude(value=0)
            .update(value=Decimal(0), pulled_at=now)
        )
    return len(rows), zeroed


def _secondary_meter(provider: BillingProvider, meter: Meter) -> ProviderMeter | None:
    """A read-only platform's meter for ours, matched there (never created), kept as its
    mapping (the admin shows it next to the primary's)."""
    from billing.services.push.common import meter_spec

    spec = meter_spec(meter)
    info = provider.find_meter(spec=spec)
    if info is None:
        return None
    mapping, _ = ProviderMeter.objects.get_or_create(
        provider=provider.name,
        meter=meter,
        defaults={
            "provider_meter_id": info.provider_meter_id,
            "event_name": info.event_name,
            "aggregation": spec.aggregation,
        },
    )
    return mapping


def _meter_for_line(meter_code: str, price_id: str, cache: dict) -> Meter | None:
    key = (meter_code, price_id)
    if key not in cache:
        meter = None
        if meter_code:
            meter = Meter.objects.filter(code=meter_code).first()
        if meter is None and price_id:
            price = Price.objects.filter(provider_price_id=price_id).select_related("meter").first()
            meter = price.meter if price else None
        cache[key] = meter
    return cache[key]


def provider_invoice_store(
    *, provider_name: str, account: Account | None, invoice: InvoiceData, now: datetime
) -> tuple[ProviderInvoice, int]:
    """Upsert one invoice and its lines (lines gone from the provider are removed)."""
    cache: dict = {}
    with transaction.atomic():
        stored, _ = ProviderInvoice.objects.update_or_create(
            provider=provider_name,
            provider_invoice_id=invoice.invoice_id,
            defaults={
                "account": account,
                "customer_id": invoice.customer_id,
                "number": invoice.number,
                "status": invoice.status,
                "currency": invoice.currency.upper(),
                "total_minor": invoice.total_minor,
                "period_start": invoice.period_start,
                "period_end": invoice.period_end,
                "created_at_provider": invoice.created,
                "raw": invoice.raw,
                "pulled_at": now,
            },
        )
        lines = [
            ProviderInvoiceLine(
                invoice=stored,
                provider_line_id=line.line_id,
                description=line.description,
                quantity=line.quantity,
                amount_minor=line.amount_minor,
                provider_price_id=line.price_id,
                meter=_meter_for_line(line.meter_code, line.price_id, cache),
                period_start=line.period_start,
                period_end=line.period_end,
                raw=line.raw,
            )
            for line in invoice.lines
        ]
        ProviderInvoiceLine.objects.bulk_create(
            lines,
            update_conflicts=True,
            unique_fields=["invoice", "provider_line_id"],
            update_fields=[
                "description",
                "quantity",
                "amount_minor",
                "provider_price_id",
                "meter",
                "period_start",
                "period_end",
                "raw",
            ],
        )
        stored.lines.exclude(provider_line_id__in=[line.line_id for line in invoice.lines]).delete()
    return stored, len(lines)


def _invoice_accounts(
    provider: BillingProvider, pair_accounts: set[int], since: datetime, account_ids
) -> list[Account]:
    ids = set(pair_accounts)
    ids |= set(
        ProviderInvoice.objects.filter(provider=provider.name, account__isnull=False).values_list(
            "account_id", flat=True
        )
    )
    if provider.stores_customer_on_account:
        ids |= set(Account.objects.exclude(provider_customer_id="").values_list("pk", flat=True))
    else:
        ids |= set(
            BillingPeriod.objects.filter(
                state=BillingPeriod.State.CLOSED, closed_at__gte=since
            ).values_list("account_id", flat=True)
        )
    if account_ids is not None:
        ids &= set(account_ids)
    return list(Account.objects.filter(pk__in=ids).order_by("pk"))


def provider_pull(
    *,
    provider: BillingProvider | None = None,
    since: date | None = None,
    until: date | None = None,
    account_ids: Iterable[int] | None = None,
    invoices: bool = True,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    actor=None,
    ledger_provider: str | None = None,
) -> PullResult:
    """Pull summaries over UTC days [since, until) (default: the last DEFAULT_DAYS days and
    today) and the invoices of the last 60 days. `ledger_provider`: whose push ledger names
    the pairs (a read-only secondary platform is read for the primary's)."""
    provider = provider or get_provider()
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    until = until or today + timedelta(days=1)
    since = since or until - timedelta(days=DEFAULT_DAYS + 1)
    ids = list(account_ids) if account_ids is not None else None
    result = PullResult(provider=provider.name, since=since, until=until)
    pairs = pull_pairs(
        provider_name=provider.name,
        since=since,
        until=until,
        account_ids=ids,
        ledger_provider=ledger_provider,
    )
    result.pairs = len(pairs)
    accounts = Account.objects.in_bulk({a for a, _ in pairs})
    meters = Meter.objects.in_bulk({m for _, m in pairs})
    for account_id, meter_id in pairs:
        account, meter = accounts[account_id], meters[meter_id]
        try:
            stored, zeroed = provider_summaries_pull(
                provider=provider, account=account, meter=meter, since=since, until=until, now=now
            )
        except LookupError as exc:
            result.skipped_no_customer += 1
            result.errors.append(str(exc))
            continue
        result.summaries_stored += stored
        result.summaries_zeroed += zeroed
        if progress is not None:
            progress(f"{account.external_id}/{meter.code}: {stored} day(s)")
    if invoices:
        created_since = now - INVOICE_LOOKBACK
        for account in _invoice_accounts(provider, set(accounts), created_since, ids):
            customer_id = provider_customer_lookup(provider, account)
            if not customer_id:
                continue
            for invoice in provider.list_invoices(
                customer_id=customer_id, created_since=created_since
            ):
                _, lines = provider_invoice_store(
                    provider_name=provider.name, account=account, invoice=invoice, now=now
                )
                result.invoices += 1
                result.invoice_lines += lines
            if progress is not None:
                progress(f"{account.external_id}: invoices")
    result.http_calls = getattr(provider, "http_calls", 0)
    return result


def provider_secondary_pull(
    *, since: date | None = None, until: date | None = None, now: datetime | None = None
) -> PullResult | None:
    """Read the secondary platform (BILLING_PROVIDER_SECONDARY) side by side with the primary:
    the same pairs (the primary's push ledger), stored under the secondary's own name. None
    when no secondary is set."""
    from django.conf import settings

    from billing.providers import get_secondary_provider

    provider = get_secondary_provider()
    if provider is None:
        return None
    return provider_pull(
        provider=provider,
        since=since,
        until=until,
        now=now,
        ledger_provider=settings.BILLING_PROVIDER,
    )
