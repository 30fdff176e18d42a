"""The simulated billing provider: keeps what it is told in the database, like a provider would.

It behaves as Stripe does where that shapes our side: identifiers are deduplicated for 24
hours only, timestamps outside [now - 35 days, now + 5 minutes] are refused, meters aggregate
sum, count or last, summaries are UTC days. On top of that it can misbehave on purpose, with
seeded faults (SimulatedFaultConfig), so that reconciliation has real mismatches to find:

- drop: answers "recorded" but never counts the usage;
- duplicate: counts it twice;
- delay: counts it only `delay_seconds` after it arrived (summaries asked earlier miss it);
- skew: records it `skew_seconds` away from the timestamp sent (it may land on another day).

Whether a fault hits a piece of usage is a pure function of (seed, fault, identifier), so the
same seed gives the same faults whatever the batching, the order or the number of runs.
Invoices are built from our closed billing periods, priced on the provider's own counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from billing.providers.base import (
    FUTURE_TOLERANCE,
    IDENTIFIER_WINDOW,
    PUSH_WINDOW,
    BillingProvider,
    CreditRequest,
    CreditResult,
    CreditRoute,
    InvoiceData,
    InvoiceLineData,
    ItemResult,
    ItemStatus,
    MeterSpec,
    MeterSummary,
    ProviderError,
    ProviderMeterInfo,
    UsageItem,
)

CUSTOMER_PREFIX = "sim_"
FAULTS = ("drop", "duplicate", "delay", "skew")
_SCALE = Decimal(2**64)


@dataclass(frozen=True)
class FaultSettings:
    """A run's faults (rates are fractions in [0, 1])."""

    seed: int = 0
    drop_rate: Decimal = Decimal(0)
    duplicate_rate: Decimal = Decimal(0)
    delay_rate: Decimal = Decimal(0)
    delay_seconds: int = 0
    skew_rate: Decimal = Decimal(0)
    skew_seconds: int = 0
    config_id: int | None = None
    # Only these provider customers' usage is hit; empty: everyone's.
    customers: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config) -> FaultSettings:
        return cls(
            seed=config.seed,
            drop_rate=config.drop_rate,
            duplicate_rate=config.duplicate_rate,
            delay_rate=config.delay_rate,
            delay_seconds=config.delay_seconds,
            skew_rate=config.skew_rate,
            skew_seconds=config.skew_seconds,
            config_id=config.pk,
            customers=frozenset(config.customers or ()),
        )

    def rate(self, fault: str) -> Decimal:
        return getattr(self, f"{fault}_rate")

    def hits(self, fault: str, identifier: str, customer_id: str = "") -> bool:
        if self.customers and customer_id not in self.customers:
            return False
        rate = self.rate(fault)
        return bool(rate) and fault_fraction(self.seed, fault, identifier) < rate


NO_FAULTS = FaultSettings()


def fault_fraction(seed: int, fault: str, identifier: str) -> Decimal:
    """A number in [0, 1) fixed by (seed, fault, identifier): exact, no floats."""
    digest = hashlib.sha256(f"{seed}:{fault}:{identifier}".encode()).digest()
    return Decimal(int.from_bytes(digest[:8], "big")) / _SCALE


def active_faults() -> FaultSettings:
    from billing.models import SimulatedFaultConfig

    config = SimulatedFaultConfig.objects.filter(active=True).first()
    return FaultSettings.from_config(config) if config else NO_FAULTS


class SimulatedProvider(BillingProvider):
    name = "simulated"
    exact_summary_bounds = True  # summaries per UTC day of the usage inside any bounds

    def __init__(
        self,
        *,
        faults: FaultSettings | None = None,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        # None: the active SimulatedFaultConfig, read when usage is reported.
        self._faults = faults
        self._clock = clock

    # --- customers and meters ----------------------------------------------------------------

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        # Derived, never stored: the account's provider_customer_id stays free for Stripe.
        return f"{CUSTOMER_PREFIX}{external_id}"

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        return ProviderMeterInfo(
            provider_meter_id=f"sim_mtr_{spec.meter_code}",
            event_name=spec.event_name,
            aggregation=spec.aggregation,
        )

    # --- usage ---------------------------------------------------------------------------------

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        from billing.models import Provider, ProviderMeter, SimulatedUsageRecord

        if not items:
            return []
        now = self._clock()
        faults = self._faults if self._faults is not None else active_faults()
        known_events = set(
            ProviderMeter.objects.filter(
                provider=Provider.SIMULATED, event_name__in={i.event_name for i in items}
            ).values_list("event_name", flat=True)
        )
        seen = set(
            SimulatedUsageRecord.objects.filter(
                identifier__in=[i.identifier for i in items],
                copy=0,
                received_at__gte=now - IDENTIFIER_WINDOW,
            ).values_list("identifier", flat=True)
        )
        results: list[ItemResult] = []
        records: list[SimulatedUsageRecord] = []
        for item in items:
            status, code = self._check(item, now, known_events, seen)
            if status is not None:
                results.append(ItemResult(item.identifier, status, code=code))
                continue
            seen.add(item.identifier)
            hit = {fault: faults.hits(fault, item.identifier, item.customer_id) for fault in FAULTS}
            recorded_at = item.timestamp + timedelta(
                seconds=faults.skew_seconds if hit["skew"] else 0
            )
            visible_at = now + timedelta(seconds=faults.delay_seconds if hit["delay"] else 0)
            copies = 2 if hit["duplicate"] and not hit["drop"] else 1
            for copy in range(copies):
                records.append(
                    SimulatedUsageRecord(
                        identifier=item.identifier,
                        copy=copy,
                        customer_id=item.customer_id,
                        event_name=item.event_name,
                        value=item.value,
                        sent_timestamp=item.timestamp,
                        timestamp=recorded_at,
                        received_at=now,
                        visible_at=visible_at,
                        dropped=hit["drop"],
                        faults=[fault for fault in FAULTS if hit[fault]],
                        fault_config_id=faults.config_id,
                    )
                )
            # The provider answers the same whatever it does with the usage afterwards.
            results.append(
                ItemResult(item.identifier, ItemStatus.RECORDED, response={"recorded": True})
            )
        with transaction.atomic():
            SimulatedUsageRecord.objects.bulk_create(records, batch_size=1000)
        return results

    @staticmethod
    def _check(
        item: UsageItem, now: datetime, known_events: set[str], seen: set[str]
    ) -> tuple[ItemStatus | None, str]:
        if item.timestamp < now - PUSH_WINDOW:
            return ItemStatus.TOO_OLD, "timestamp_too_far_in_past"
        if item.timestamp > now + FUTURE_TOLERANCE:
            return ItemStatus.REJECTED, "timestamp_in_future"
        if item.event_name not in known_events:
            return ItemStatus.REJECTED, "no_meter"
        if item.identifier in seen:
            return ItemStatus.DUPLICATE, "duplicate_identifier"
        return None, ""

    # --- reads ---------------------------------------------------------------------------------

    def _counted(self, *, customer_id: str, event_name: str, start: datetime, end: datetime):
        from billing.models import SimulatedUsageRecord

        return SimulatedUsageRecord.objects.filter(
            customer_id=customer_id,
            event_name=event_name,
            timestamp__gte=start,
            timestamp__lt=end,
            dropped=False,
            visible_at__lte=self._clock(),
        )

    def _aggregate(self, aggregation: str, rows) -> Decimal:
        if aggregation == "count":
            return Decimal(rows.count())
        if aggregation == "last":
            last = rows.order_by("-timestamp", "-id").values_list("value", flat=True).first()
            return last if last is not None else Decimal(0)
        return rows.aggregate(total=Sum("value"))["total"] or Decimal(0)

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        from datetime import UTC

        from billing.models import Provider, ProviderMeter

        meter = ProviderMeter.objects.get(
            provider=Provider.SIMULATED, provider_meter_id=provider_meter_id
        )
        rows = self._counted(
            customer_id=customer_id, event_name=meter.event_name, start=start, end=end
        )
        by_day = rows.annotate(day=TruncDay("timestamp", tzinfo=UTC)).order_by("day")
        if meter.aggregation == "last":
            last: dict[datetime, Decimal] = {}
            for day, value in by_day.order_by("day", "timestamp", "id").values_list("day", "value"):
                last[day] = value
            daily = sorted(last.items())
        elif meter.aggregation == "count":
            daily = list(by_day.values("day").annotate(v=Count("id")).values_list("day", "v"))
        else:
            daily = list(by_day.values("day").annotate(v=Sum("value")).values_list("day", "v"))
        for day, value in daily:
            yield MeterSummary(
                provider_meter_id=provider_meter_id,
                customer_id=customer_id,
                start=day,
                end=day + timedelta(days=1),
                value=Decimal(value),
            )

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """Recorded once per idempotency key (SimulatedCredit). The same key again answers the
        first credit; the same key with other values is refused, as Stripe refuses it."""
        from billing.models import SimulatedCredit

        if credit.amount_minor <= 0:
            raise ProviderError("A credit is a positive amount.")
        fields = _credit_fields(credit)
        with transaction.atomic():
            row, created = SimulatedCredit.objects.get_or_create(
                idempotency_key=credit.idempotency_key,
                defaults={
                    **fields,
                    "credit_id": f"sim_cr_{hashlib.sha256(credit.idempotency_key.encode()).hexdigest()[:16]}",
                    "route": CreditRoute.SIMULATED_CREDIT,
                },
            )
        if not created and any(getattr(row, k) != v for k, v in fields.items()):
            raise ProviderError(
                "Keys for idempotent requests can only be used with the same parameters."
            )
        return CreditResult(
            credit_id=row.credit_id,
            route=CreditRoute.SIMULATED_CREDIT,
            response={"id": row.credit_id, "replayed": not created, **fields},
        )

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        """One invoice per closed billing period of the account, priced on what this provider
        counted (so dropped or duplicated usage shows on the invoice as it would at Stripe)."""
        from billing.models import BillingPeriod, Provider, ProviderMeter
        from billing.pricing import price_invoice
        from metering.models import Account

        external_id = customer_id.removeprefix(CUSTOMER_PREFIX)
        account = Account.objects.filter(external_id=external_id).first()
        if account is None:
            return
        periods = BillingPeriod.objects.filter(
            account=account, state=BillingPeriod.State.CLOSED
        ).select_related("subscription__plan")
        if created_since is not None:
            periods = periods.filter(closed_at__gte=created_since)
        for period in periods.order_by("-starts_at"):
            plan = period.subscription.plan
            prices = list(plan.prices.select_related("meter"))
            meters = {
                pm.meter_id: pm
                for pm in ProviderMeter.objects.filter(
                    provider=Provider.SIMULATED, meter_id__in=[p.meter_id for p in prices]
                )
            }
            priced = []
            for price in prices:
                provider_meter = meters.get(price.meter_id)
                if provider_meter is None:
                    continue
                rows = self._counted(
                    customer_id=customer_id,
                    event_name=provider_meter.event_name,
                    start=period.starts_at,
                    end=period.ends_at,
                )
                quantity = self._aggregate(provider_meter.aggregation, rows)
                priced.append((price, quantity))
            invoice = price_invoice(
                lines=[(price.to_spec(), max(quantity, Decimal(0))) for price, quantity in priced],
                currency=period.currency,
                flat_fee_minor=plan.flat_fee_minor,
                minimum_commitment_minor=plan.minimum_commitment_minor,
            )
            usage_lines = iter(priced)
            lines = []
            for index, line in enumerate(invoice.lines):
                price, quantity = next(usage_lines) if line.usage is not None else (None, None)
                lines.append(
                    InvoiceLineData(
                        line_id=f"sim_il_{period.pk}_{index}",
                        description=line.title,
                        quantity=quantity,
                        amount_minor=line.amount_minor,
                        price_id=(price.provider_price_id or f"sim_price_{price.pk}")
                        if price
                        else "",
                        period_start=period.starts_at,
                        period_end=period.ends_at,
                        raw={"kind": str(line.kind)},
                        meter_code=price.meter.code if price else "",
                    )
                )
            yield InvoiceData(
                invoice_id=f"sim_in_{period.pk}",
                customer_id=customer_id,
                number=f"SIM-{period.pk:06d}",
                status="paid",
                currency=period.currency,
                total_minor=invoice.total_minor,
                period_start=period.starts_at,
                period_end=period.ends_at,
                created=period.closed_at,
                lines=lines,
                raw={"billing_period": period.pk},
            )


def _credit_fields(credit: CreditRequest) -> dict:
    return {
        "reference": credit.reference,
        "customer_id": credit.customer_id,
        "currency": credit.currency.upper(),
        "amount_minor": credit.amount_minor,
        "invoice_id": credit.invoice_id,
        "reason_code": credit.reason_code,
        "description": credit.description,
        "metadata": credit.provider_metadata(),
    }


def simulated_faults_configure(
    *,
    name: str,
    seed: int,
    drop_rate: Decimal = Decimal(0),
    duplicate_rate: Decimal = Decimal(0),
    delay_rate: Decimal = Decimal(0),
    delay_seconds: int = 0,
    skew_rate: Decimal = Decimal(0),
    skew_seconds: int = 0,
    customers: Sequence[str] = (),
    actor=None,
):
    """Make a new fault configuration the active one (the previous one stays, inactive, as the
    record of earlier runs). All rates zero switches faults off."""
    from billing.models import SimulatedFaultConfig

    with transaction.atomic():
        for previous in SimulatedFaultConfig.objects.select_for_update().filter(active=True):
            previous.active = False
            previous._change_reason = f"Replaced by {name}"
            if actor is not None:
                previous._history_user = actor
            previous.save(update_fields=["active"])
        config = SimulatedFaultConfig(
            name=name,
            seed=seed,
            drop_rate=drop_rate,
            duplicate_rate=duplicate_rate,
            delay_rate=delay_rate,
            delay_seconds=delay_seconds,
            skew_rate=skew_rate,
            skew_seconds=skew_seconds,
            customers=list(customers),
            active=True,
        )
        if actor is not None:
            config._history_user = actor
        config.full_clean()
        config.save()
    return config
