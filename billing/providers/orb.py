"""The Orb adapter: the only module that imports the `orb` SDK (PyPI `orb-billing`).

What Orb documents, and how the adapter and the push ledger honour it (the SDK's docstrings
are Orb's API reference):

- Usage is `POST /ingest` with a list of events `{idempotency_key, external_customer_id |
  customer_id, event_name, timestamp (ISO 8601, UTC), properties}`. "Exactly one event with a
  given idempotency key will be ingested": the key is kept for good, so a resend, however
  late, is counted once (PlatformRules.key_retention None: the ledger resends a stale entry
  blindly instead of deciding from a summary as for Stripe's 24-hour identifiers).
- A 200 answers `validation_failed: []`. A 4xx means "at least one event with a validation
  failure"; such an event's key "is not marked as processed". The adapter answers the failed
  events (too old / refused) and sends the others again in a request of their own (Orb's key
  makes that safe whether or not the 4xx ingested them). A 5xx is retried in its entirety.
- `timestamp < now - grace period` (set per Orb account: ORB_GRACE_PERIOD_HOURS) and more
  than 5 minutes ahead are validation errors; older usage needs a backfill, which Meterops
  does not run: the ledger records such usage too_old before sending it.
- `?debug=true` adds `debug: {duplicate: [...], ingested: [...]}`: a key Orb already had is
  answered DUPLICATE (counted), a new one RECORDED.
- Orb publishes no hard rate limit; a 429 (and 5xx, network errors) is retried with backoff,
  honouring Retry-After up to `retry_after_cap` (ORB_RETRY_AFTER_MAX); a longer wait halts the
  run. The SDK's own retries are off so that this is the one retry policy.
- Customers are matched by external id (`GET /customers/external_customer_id/{id}`) or
  created with it (and timezone UTC, so Orb's "customer local midnight" days are UTC days);
  events name the customer by `external_customer_id`, so nothing is stored on our account.
- Meters are billable metrics (`POST /metrics`, SQL over events, on an item): sum meters
  `SELECT SUM(value) ...`, period-to-date ("last") meters `SELECT MAX(value) ...` (exact for
  our max and unique_count meters, whose period-to-date value never falls).
- Read-back is `GET /subscriptions/{id}/usage` with `granularity=day` over UTC midnights, or
  over exactly [start, end) without granularity otherwise, for every active subscription of
  the customer (no subscription: Orb bills none of the usage, nothing to read).
- Invoices `GET /invoices?external_customer_id=`, the preview `GET /invoices/upcoming?
  subscription_id=`, credits `POST /customers/{id}/balance_transactions` (increment).
- Corrections: `PUT /events/{idempotency_key}` amends an event, `.../deprecate` removes it from
  billing, within the current billing period (or the previous one's grace period).
- Numbers are read from the raw JSON as decimals (the SDK's models hold floats).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import orb

from billing.money import to_minor_units
from billing.providers.answers import iso_utc, parse_time, sdk_body
from billing.providers.base import (
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
    PlatformRules,
    ProviderMeterInfo,
    ProviderMisconfigured,
    ProviderUnavailable,
    UsageItem,
)
from billing.providers.retry import RetryPolicy

DAY_SECONDS = 86_400
INGEST_BATCH = 500
DEFAULT_RETRY_AFTER_CAP = 30.0

ORB_RULES = PlatformRules(
    key_field="idempotency_key",
    key_retention=None,
    past_window=timedelta(hours=12),  # the account's grace period (ORB_GRACE_PERIOD_HOURS)
    future_tolerance=timedelta(minutes=5),
    batch_size=INGEST_BATCH,
    rate_limit_per_second=None,
    read_window="customer_day",
    max_value_digits=None,
    corrections="amend (PUT /events/{id}) or deprecate an event, within the current billing "
    "period or the previous one's grace period; older: a backfill",
)


class OrbBackoff(ProviderUnavailable):
    """Orb asked us to wait longer than we may while holding the push lock."""


def _error_body(exc: orb.APIStatusError) -> dict:
    try:
        return json.loads(exc.response.content or b"{}", parse_float=Decimal)
    except ValueError:
        return {}


def _number(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def json_number(value: Decimal) -> int | float:
    """The value as a JSON number Orb aggregates, written with its exact digits: an int when
    whole, else a float whose shortest repr is those very digits (true for every value of at
    most 15 significant digits, which the ledger's split guarantees). Anything else is refused
    rather than rounded."""
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    if Decimal(repr(as_float)) != value:
        raise ValueError(f"{value} cannot be written exactly as a JSON number")
    return as_float


def metric_sql(spec: MeterSpec) -> str:
    aggregate = "MAX" if spec.aggregation == "last" else "SUM"
    return f"SELECT {aggregate}(value) FROM events WHERE event_name = '{spec.event_name}'"


class OrbProvider(RetryPolicy, BillingProvider):
    name = "orb"
    platform = "Orb"
    backoff_error = OrbBackoff
    retryable = (orb.RateLimitError, orb.InternalServerError, orb.APIConnectionError)
    customer_by_external_id = True
    exact_summary_bounds = True

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str = "",
        grace_period: timedelta = ORB_RULES.past_window,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        batch_size: int = INGEST_BATCH,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ProviderMisconfigured("ORB_API_KEY is not set.")
        self.client = orb.Orb(api_key=api_key, base_url=api_base or None, max_retries=0)
        self.rules = PlatformRules(**{**ORB_RULES.__dict__, "past_window": grace_period})
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.batch_size = batch_size
        self._customers: set[str] = set()
        self._subscriptions: dict[str, list[str]] = {}

    # --- the one retry policy (billing/providers/retry.py) -----------------------------------

    def _not_retried(self, exc: Exception) -> BaseException | None:
        if isinstance(exc, (orb.AuthenticationError, orb.PermissionDeniedError)):
            return ProviderMisconfigured(f"Orb refused our key: {exc}")
        return super()._not_retried(exc)

    # --- customers and meters ----------------------------------------------------------------

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        if external_id in self._customers:
            return external_id
        try:
            self._call(self.client.customers.with_raw_response.fetch_by_external_id, external_id)
        except orb.NotFoundError:
            try:
                self._call(
                    self.client.customers.with_raw_response.create,
                    name=name or external_id,
                    email=f"{external_id}@customers.meterops.invalid",
                    email_delivery=False,
                    external_customer_id=external_id,
                    timezone="UTC",
                    idempotency_key=f"mo-customer-{external_id}"[:255],
                )
            except (orb.ConflictError, orb.DuplicateResourceCreation):
                pass  # made meanwhile (or by our earlier attempt): matched by external id
        self._customers.add(external_id)
        return external_id

    def _metrics(self) -> Iterator[dict]:
        cursor = None
        while True:
            params = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = sdk_body(self._call(self.client.metrics.with_raw_response.list, **params))
            yield from page.get("data", [])
            cursor = (page.get("pagination_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    def find_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo | None:
        for metric in self._metrics():
            metadata = metric.get("metadata") or {}
            if metadata.get("meterops_event_name") == spec.event_name:
                return ProviderMeterInfo(
                    provider_meter_id=metric["id"],
                    event_name=spec.event_name,
                    aggregation=metadata.get("meterops_aggregation", ""),
                )
        return None

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        if self.read_only:
            raise ProviderMisconfigured("Orb is the read-only secondary platform here.")
        found = self.find_meter(spec=spec)
        if found is not None:
            return found
        item = sdk_body(
            self._call(
                self.client.items.with_raw_response.create,
                name=spec.display_name,
                idempotency_key=f"mo-item-{spec.event_name}",
            )
        )
        metric = sdk_body(
            self._call(
                self.client.metrics.with_raw_response.create,
                name=spec.display_name,
                description=f"Meterops meter {spec.meter_code}",
                item_id=item["id"],
                sql=metric_sql(spec),
                metadata={
                    "meterops_event_name": spec.event_name,
                    "meterops_aggregation": spec.aggregation,
                },
                idempotency_key=f"mo-metric-{spec.event_name}",
            )
        )
        return ProviderMeterInfo(
            provider_meter_id=metric["id"], event_name=spec.event_name, aggregation=spec.aggregation
        )

    # --- usage ---------------------------------------------------------------------------------

    @staticmethod
    def _event(item: UsageItem) -> dict:
        return {
            "idempotency_key": item.identifier,
            "external_customer_id": item.customer_id,
            "event_name": item.event_name,
            "timestamp": iso_utc(item.timestamp),
            "properties": {"value": json_number(item.value)},
        }

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        if self.read_only:
            raise ProviderMisconfigured("Orb is the read-only secondary platform here.")
        results: dict[str, ItemResult] = {}
        for start in range(0, len(items), self.batch_size):
            for result in self._ingest(list(items[start : start + self.batch_size])):
                results[result.identifier] = result
        return [results[i.identifier] for i in items]

    def _ingest(self, items: list[UsageItem]) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        try:
            raw = self._call(
                self.client.events.with_raw_response.ingest,
                events=[self._event(i) for i in items],
                extra_query={"debug": "true"},
            )
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except orb.BadRequestError as exc:
            return self._validation_failed(items, exc)
        body = sdk_body(raw)
        duplicates = set((body.get("debug") or {}).get("duplicate") or [])
        return [
            ItemResult(
                i.identifier,
                ItemStatus.DUPLICATE if i.identifier in duplicates else ItemStatus.RECORDED,
                code="duplicate_idempotency_key" if i.identifier in duplicates else "",
                response={"api": "ingest"},
            )
            for i in items
        ]

    def _validation_failed(self, items: list[UsageItem], exc: orb.BadRequestError) -> list:
        body = _error_body(exc)
        failed = {
            f.get("idempotency_key"): f.get("validation_errors") or []
            for f in body.get("validation_failed") or []
        }
        if not failed:
            # A 400 about the request as a whole: no item can go through as it is.
            return [
                ItemResult(
                    i.identifier,
                    ItemStatus.REJECTED,
                    code="request_invalid",
                    message=str(body.get("title") or exc)[:500],
                    response={"api": "ingest", "http_status": exc.status_code},
                )
                for i in items
            ]
        out: list[ItemResult] = []
        for item in items:
            errors = failed.get(item.identifier)
            if errors is None:
                continue
            text = "; ".join(errors)
            too_old = "grace period" in text.lower() or "too far in the past" in text.lower()
            out.append(
                ItemResult(
                    item.identifier,
                    ItemStatus.TOO_OLD if too_old else ItemStatus.REJECTED,
                    code="outside_grace_period" if too_old else "validation_failed",
                    message=text[:500],
                    response={"api": "ingest", "http_status": exc.status_code},
                )
            )
        rest = [i for i in items if i.identifier not in failed]
        # Orb did not mark the refused request's keys as processed in any case we rely on:
        # the others go again on their own (their keys make that safe either way).
        return out + (self._ingest(rest) if rest else [])

    # --- reads ---------------------------------------------------------------------------------

    def _subscription_ids(self, customer_id: str) -> list[str]:
        if customer_id not in self._subscriptions:
            ids: list[str] = []
            cursor = None
            while True:
                params: dict = {"external_customer_id": [customer_id], "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                page = sdk_body(
                    self._call(self.client.subscriptions.with_raw_response.list, **params)
                )
                ids.extend(s["id"] for s in page.get("data", []) if s.get("status") != "upcoming")
                cursor = (page.get("pagination_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
            self._subscriptions[customer_id] = ids
        return self._subscriptions[customer_id]

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """Per UTC day when both bounds are UTC midnights (`granularity=day`; the customer was
        made in UTC), else one summary over exactly [start, end)."""
        params: dict = {"timeframe_start": iso_utc(start), "timeframe_end": iso_utc(end)}
        if start.timestamp() % DAY_SECONDS == 0 and end.timestamp() % DAY_SECONDS == 0:
            params["granularity"] = "day"
        for subscription_id in self._subscription_ids(customer_id):
            body = sdk_body(
                self._call(
                    self.client.subscriptions.with_raw_response.fetch_usage,
                    subscription_id,
                    **params,
                )
            )
            for metric in body.get("data", []):
                if (metric.get("billable_metric") or {}).get("id") != provider_meter_id:
                    continue
                for window in metric.get("usage", []):
                    value = _number(window.get("quantity"))
                    if not value:
                        continue
                    yield MeterSummary(
                        provider_meter_id=provider_meter_id,
                        customer_id=customer_id,
                        start=parse_time(window["timeframe_start"]),
                        end=parse_time(window["timeframe_end"]),
                        value=value,
                    )

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        cursor = None
        while True:
            params: dict = {"external_customer_id": customer_id, "limit": 100}
            if created_since is not None:
                params["invoice_date_gte"] = iso_utc(created_since)
            if cursor:
                params["cursor"] = cursor
            page = sdk_body(self._call(self.client.invoices.with_raw_response.list, **params))
            for invoice in page.get("data", []):
                yield self._invoice(invoice, customer_id)
            cursor = (page.get("pagination_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        for subscription_id in self._subscription_ids(customer_id):
            try:
                body = sdk_body(
                    self._call(
                        self.client.invoices.with_raw_response.fetch_upcoming,
                        subscription_id=subscription_id,
                    )
                )
            except orb.NotFoundError:
                continue
            return self._invoice(body, customer_id)
        return None

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """An `increment` balance transaction (Orb applies the balance to the next invoice,
        finalized invoices included: Orb has no credit note for usage), once per key."""
        from billing.money import from_minor_units

        customer = sdk_body(
            self._call(
                self.client.customers.with_raw_response.fetch_by_external_id, credit.customer_id
            )
        )
        body = sdk_body(
            self._call(
                self.client.customers.balance_transactions.with_raw_response.create,
                customer["id"],
                amount=format(from_minor_units(credit.amount_minor, credit.currency), "f"),
                type="increment",
                description=credit.description[:255],
                idempotency_key=credit.idempotency_key,
            )
        )
        return CreditResult(
            credit_id=body.get("id", ""), route=CreditRoute.BALANCE_INCREMENT, response=body
        )

    def _meter_code(self, metric_id: str) -> str:
        """Our meter's code for an Orb billable metric (through the meter mapping)."""
        if not metric_id:
            return ""
        from billing.models import ProviderMeter

        mapping = (
            ProviderMeter.objects.filter(provider=self.name, provider_meter_id=metric_id)
            .select_related("meter")
            .first()
        )
        return mapping.meter.code if mapping else ""

    def _invoice(self, invoice: dict, customer_id: str) -> InvoiceData:
        currency = (invoice.get("currency") or "USD").upper()
        lines = []
        for line in invoice.get("line_items") or []:
            price = line.get("price") or {}
            metric = price.get("billable_metric") or {}
            lines.append(
                InvoiceLineData(
                    line_id=line.get("id") or f"{invoice.get('id', 'upcoming')}-{len(lines)}",
                    description=line.get("name") or "",
                    quantity=None if line.get("quantity") is None else _number(line["quantity"]),
                    amount_minor=to_minor_units(_number(line.get("amount")), currency),
                    price_id=price.get("id") or "",
                    period_start=parse_time(line.get("start_date")),
                    period_end=parse_time(line.get("end_date")),
                    raw={**line, "billable_metric_id": metric.get("id", "")},
                    meter_code=self._meter_code(metric.get("id", "")),
                )
            )
        starts = [line.period_start for line in lines if line.period_start]
        ends = [line.period_end for line in lines if line.period_end]
        return InvoiceData(
            invoice_id=invoice.get("id") or f"upcoming-{customer_id}",
            customer_id=customer_id,
            number=invoice.get("invoice_number") or "",
            status=invoice.get("status") or "",
            currency=currency,
            total_minor=to_minor_units(_number(invoice.get("total")), currency),
            period_start=min(starts, default=None),
            period_end=max(ends, default=None),
            created=parse_time(invoice.get("created_at")),
            lines=lines,
            raw={k: v for k, v in invoice.items() if k != "line_items"},
        )
