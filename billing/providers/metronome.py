"""The Metronome adapter: the only module that imports the `metronome` SDK (PyPI
`metronome-sdk`).

What Metronome documents (the SDK's docstrings are its API reference), and how the adapter
and the push ledger honour it:

- Usage is `POST /v1/ingest` with a list of 1 to 100 events `{transaction_id, customer_id,
  event_type, timestamp (RFC 3339), properties}`. `customer_id` is a Metronome customer id or
  one of its ingest aliases: Meterops creates each customer with our account's external id as
  an ingest alias, so nothing is stored on our account.
- "The transaction_id serves as your idempotency key ... Metronome maintains a 34-day
  deduplication window": PlatformRules.key_retention 34 days. The ingest answers 200 with no
  body whether or not a key was new, so a resend is answered RECORDED (Metronome counts it
  once within the window); past the window the ledger decides from the read-back, as for
  Stripe's 24 hours.
- A 429 (and 5xx, network errors) is retried with backoff, honouring Retry-After up to
  `retry_after_cap` (METRONOME_RETRY_AFTER_MAX); a longer wait halts the run. The SDK's own
  retries are off so that this is the one retry policy. A 400 refuses the request as a whole.
- Meters are billable metrics (`POST /v1/billable-metrics/create`: `event_type_filter` on our
  event name, `SUM` of `value`, `MAX` for period-to-date values), found again by that filter.
- Read-back is `POST /v1/usage` with `window_size=DAY` over UTC midnights (the only bounds it
  takes), per Metronome customer id and billable metric: read_window "utc_day".
- Invoices `GET /v1/customers/{id}/invoices` (totals in the credit type's unit, cents for
  USD); lines carry a product id, not a billable metric.
- The upcoming invoice is the customer's DRAFT invoice for the current period (`GET
  /v1/customers/{id}/invoices?status=DRAFT`), which Metronome keeps current as usage arrives.
- Credits are credit grants (`POST /v1/credits/createGrant`: `grant_amount` in the
  currency's pricing unit, USD (cents) for USD, so the integer minor units exactly;
  `paid_amount` 0; `uniqueness_key` our key, a repeat answering 409 and the grant found
  again by `POST /v1/credits/listGrants`).
- Numbers are read from the raw JSON as decimals (the SDK's models hold floats).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import metronome

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
    ProviderError,
    ProviderMeterInfo,
    ProviderMisconfigured,
    ProviderUnavailable,
    UsageItem,
)
from billing.providers.orb import json_number
from billing.providers.retry import RetryPolicy

INGEST_BATCH = 100
DEFAULT_RETRY_AFTER_CAP = 30.0
DAY_SECONDS = 86_400
# Credits: a grant outlives any period (what is left carries on) and is drawn down first.
GRANT_LIFETIME = timedelta(days=3650)
GRANT_PRIORITY = 1

METRONOME_RULES = PlatformRules(
    key_field="transaction_id",
    key_retention=timedelta(days=34),
    # "Historical events can be backdated up to 34 days" (the ingest reference): older usage
    # is recorded too_old by the ledger, never sent.
    past_window=timedelta(days=34),
    future_tolerance=timedelta(minutes=5),
    batch_size=INGEST_BATCH,
    rate_limit_per_second=None,
    read_window="utc_day",
    max_value_digits=None,
    corrections="send a compensating event (a negative value on a SUM metric); an invoice "
    "is corrected by a credit or an invoice correction",
)


class MetronomeBackoff(ProviderUnavailable):
    """Metronome asked us to wait longer than we may while holding the push lock."""


def _number(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


class MetronomeProvider(RetryPolicy, BillingProvider):
    name = "metronome"
    platform = "Metronome"
    backoff_error = MetronomeBackoff
    retryable = (
        metronome.RateLimitError,
        metronome.InternalServerError,
        metronome.APIConnectionError,
    )
    customer_by_external_id = True
    rules = METRONOME_RULES

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str = "",
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        batch_size: int = INGEST_BATCH,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ProviderMisconfigured("METRONOME_API_KEY is not set.")
        self.client = metronome.Metronome(
            bearer_token=api_key, base_url=api_base or None, max_retries=0
        )
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.batch_size = min(batch_size, INGEST_BATCH)
        self._ids: dict[str, str] = {}

    # --- the one retry policy (billing/providers/retry.py) -----------------------------------

    def _not_retried(self, exc: Exception) -> BaseException | None:
        if isinstance(exc, (metronome.AuthenticationError, metronome.PermissionDeniedError)):
            return ProviderMisconfigured(f"Metronome refused our key: {exc}")
        return super()._not_retried(exc)

    # --- customers and meters ----------------------------------------------------------------

    def _customer_id(self, external_id: str) -> str:
        """The Metronome id of the customer whose ingest alias is our external id ("")."""
        if external_id not in self._ids:
            page = sdk_body(
                self._call(
                    self.client.v1.customers.with_raw_response.list, ingest_alias=external_id
                )
            )
            found = [c["id"] for c in page.get("data", [])]
            if not found:
                return ""
            self._ids[external_id] = found[0]
        return self._ids[external_id]

    def lookup_customer(self, *, external_id: str, existing_id: str = "") -> str:
        return external_id if self._customer_id(external_id) else ""

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        if self._customer_id(external_id):
            return external_id
        if self.read_only:
            return ""
        try:
            body = sdk_body(
                self._call(
                    self.client.v1.customers.with_raw_response.create,
                    name=name or external_id,
                    external_id=external_id,
                    ingest_aliases=[external_id],
                )
            )
            self._ids[external_id] = body["data"]["id"]
        except metronome.ConflictError:
            self._customer_id(external_id)  # made meanwhile: matched by its ingest alias
        return external_id

    def _metrics(self) -> Iterator[dict]:
        cursor = None
        while True:
            params: dict = {"include_archived": False}
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(
                self._call(self.client.v1.billable_metrics.with_raw_response.list, **params)
            )
            yield from page.get("data", [])
            cursor = page.get("next_page")
            if not cursor:
                return

    def find_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo | None:
        for metric in self._metrics():
            names = (metric.get("event_type_filter") or {}).get("in_values") or []
            if names == [spec.event_name]:
                kind = metric.get("aggregation_type")
                return ProviderMeterInfo(
                    provider_meter_id=metric["id"],
                    event_name=spec.event_name,
                    aggregation="last" if kind == "MAX" else "sum",
                )
        return None

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        if self.read_only:
            raise ProviderMisconfigured("Metronome is the read-only secondary platform here.")
        found = self.find_meter(spec=spec)
        if found is not None:
            return found
        body = sdk_body(
            self._call(
                self.client.v1.billable_metrics.with_raw_response.create,
                name=spec.display_name,
                event_type_filter={"in_values": [spec.event_name]},
                aggregation_type="MAX" if spec.aggregation == "last" else "SUM",
                aggregation_key="value",
                property_filters=[{"name": "value", "exists": True}],
            )
        )
        return ProviderMeterInfo(
            provider_meter_id=body["data"]["id"],
            event_name=spec.event_name,
            aggregation=spec.aggregation,
        )

    # --- usage ---------------------------------------------------------------------------------

    @staticmethod
    def _event(item: UsageItem) -> dict:
        return {
            "transaction_id": item.identifier,
            "customer_id": item.customer_id,
            "event_type": item.event_name,
            "timestamp": iso_utc(item.timestamp),
            "properties": {"value": json_number(item.value)},
        }

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        if self.read_only:
            raise ProviderMisconfigured("Metronome is the read-only secondary platform here.")
        results: list[ItemResult] = []
        for start in range(0, len(items), self.batch_size):
            results.extend(self._ingest(list(items[start : start + self.batch_size])))
        return results

    def _ingest(self, items: list[UsageItem]) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        try:
            self._call(self.client.v1.usage.ingest, usage=[self._event(i) for i in items])
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except metronome.BadRequestError as exc:
            return [
                ItemResult(
                    i.identifier,
                    ItemStatus.REJECTED,
                    code="request_invalid",
                    message=str(exc)[:500],
                    response={"api": "ingest", "http_status": exc.status_code},
                )
                for i in items
            ]
        return [
            ItemResult(i.identifier, ItemStatus.RECORDED, response={"api": "ingest"}) for i in items
        ]

    # --- reads ---------------------------------------------------------------------------------

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """Per UTC day (`window_size=DAY`; Metronome takes UTC midnights only)."""
        metronome_id = self._customer_id(customer_id)
        if not metronome_id:
            return
        cursor = None
        while True:
            params: dict = {
                "starting_on": iso_utc(start),
                "ending_before": iso_utc(end),
                "window_size": "DAY",
                "customer_ids": [metronome_id],
                "billable_metrics": [{"id": provider_meter_id}],
            }
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(self._call(self.client.v1.usage.with_raw_response.list, **params))
            for row in page.get("data", []):
                if row.get("billable_metric_id") != provider_meter_id:
                    continue
                value = _number(row.get("value"))
                if not value:
                    continue
                yield MeterSummary(
                    provider_meter_id=provider_meter_id,
                    customer_id=customer_id,
                    start=parse_time(row["start_timestamp"]),
                    end=parse_time(row["end_timestamp"]),
                    value=value,
                )
            cursor = page.get("next_page")
            if not cursor:
                return

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        metronome_id = self._customer_id(customer_id)
        if not metronome_id:
            return
        cursor = None
        while True:
            params: dict = {"customer_id": metronome_id, "limit": 100}
            if created_since is not None:
                params["starting_on"] = iso_utc(created_since)
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(
                self._call(self.client.v1.customers.invoices.with_raw_response.list, **params)
            )
            for invoice in page.get("data", []):
                yield self._invoice(invoice, customer_id)
            cursor = page.get("next_page")
            if not cursor:
                return

    @staticmethod
    def _currency(credit_type: dict | None) -> str:
        name = (credit_type or {}).get("name") or "USD (cents)"
        return name.split(" ")[0].upper()

    def _invoice(self, invoice: dict, customer_id: str) -> InvoiceData:
        currency = self._currency(invoice.get("credit_type"))
        lines = [
            InvoiceLineData(
                line_id=f"{invoice['id']}-{n}",
                description=line.get("name") or "",
                quantity=None if line.get("quantity") is None else _number(line["quantity"]),
                amount_minor=int(_number(line.get("total"))),
                price_id=line.get("product_id") or "",
                period_start=parse_time(line.get("starting_at")),
                period_end=parse_time(line.get("ending_before")),
                raw=line,
            )
            for n, line in enumerate(invoice.get("line_items") or [])
        ]
        return InvoiceData(
            invoice_id=invoice["id"],
            customer_id=customer_id,
            number="",
            status=invoice.get("status") or "",
            currency=currency,
            total_minor=int(_number(invoice.get("total"))),
            period_start=parse_time(invoice.get("start_timestamp")),
            period_end=parse_time(invoice.get("end_timestamp")),
            created=parse_time(invoice.get("issued_at") or invoice.get("created_at")),
            lines=lines,
            raw={k: v for k, v in invoice.items() if k != "line_items"},
        )

    # --- the upcoming invoice and credits ([7]) --------------------------------------------------

    def _draft_invoice(self, metronome_id: str) -> dict | None:
        """The customer's DRAFT usage invoice for the period holding now (Metronome keeps it
        up to date as usage arrives), else its newest draft; None without one."""
        drafts: list[dict] = []
        cursor = None
        while True:
            params: dict = {"customer_id": metronome_id, "status": "DRAFT", "limit": 100}
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(
                self._call(self.client.v1.customers.invoices.with_raw_response.list, **params)
            )
            drafts.extend(i for i in page.get("data", []) if i.get("status") == "DRAFT")
            cursor = page.get("next_page")
            if not cursor:
                break
        if not drafts:
            return None
        now = datetime.now(UTC)

        def current(invoice: dict) -> bool:
            start = parse_time(invoice.get("start_timestamp"))
            end = parse_time(invoice.get("end_timestamp"))
            return bool(start and end and start <= now < end)

        return next(
            (i for i in drafts if current(i) and i.get("type") == "USAGE"),
            next((i for i in drafts if current(i)), drafts[0]),
        )

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        """The current period's DRAFT invoice (`GET /v1/customers/{id}/invoices?status=
        DRAFT`): Metronome's own running total, credit grants drawn down included."""
        metronome_id = self._customer_id(customer_id)
        if not metronome_id:
            return None
        draft = self._draft_invoice(metronome_id)
        return None if draft is None else self._invoice(draft, customer_id)

    def _credit_type_id(self, currency: str) -> str:
        """The fiat pricing unit of `currency` in its minor unit ("USD (cents)"), from
        `GET /v1/credit-types/list`: the grant is then exactly `amount_minor` of it."""
        from metering.currencies import currency_minor_unit

        cursor = None
        while True:
            params: dict = {"limit": 100}
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(
                self._call(self.client.v1.pricing_units.with_raw_response.list, **params)
            )
            for unit in page.get("data", []):
                name = unit.get("name") or ""
                if (
                    unit.get("is_currency")
                    and name.split(" ")[0].upper() == currency.upper()
                    and ("(cents)" in name) == (currency_minor_unit(currency) == 2)
                ):
                    return unit["id"]
            cursor = page.get("next_page")
            if not cursor:
                break
        raise ProviderError(
            f"Metronome has no {currency} pricing unit in the currency's minor unit: apply this "
            "credit in Metronome itself."
        )

    def _grant_by_key(self, metronome_id: str, key: str) -> dict | None:
        cursor = None
        while True:
            params: dict = {"customer_ids": [metronome_id], "limit": 100}
            if cursor:
                params["next_page"] = cursor
            page = sdk_body(
                self._call(self.client.v1.credit_grants.with_raw_response.list, **params)
            )
            for grant in page.get("data", []):
                if grant.get("uniqueness_key") == key:
                    return grant
            cursor = page.get("next_page")
            if not cursor:
                return None

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """A credit grant (`POST /v1/credits/createGrant`, free: paid_amount 0) of exactly
        `amount_minor` in the currency's pricing unit, effective from the start of the
        current draft invoice's period (so the next invoice draws it down, usage already in
        the period included) and lasting ten years (a balance left over carries on, as
        Stripe's and Orb's do). `uniqueness_key` is our key: a repeat answers 409 and the
        grant is found again by it. A credit on an invoiced period (`invoice_id` set) is
        drawn down by the next invoice too (no credit on a finalized Metronome invoice)."""
        if self.read_only:
            raise ProviderMisconfigured("Metronome is the read-only secondary platform here.")
        if credit.amount_minor <= 0:
            raise ProviderError("A Metronome credit must be a positive amount.")
        metronome_id = self._customer_id(credit.customer_id)
        if not metronome_id:
            raise ProviderError(f"Metronome has no customer {credit.customer_id}.")
        credit_type = self._credit_type_id(credit.currency)
        draft = self._draft_invoice(metronome_id)
        start = parse_time((draft or {}).get("start_timestamp"))
        if start is None:
            now = datetime.now(UTC)
            start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        try:
            body = sdk_body(
                self._call(
                    self.client.v1.credit_grants.with_raw_response.create,
                    customer_id=metronome_id,
                    name=credit.description[:255] or "Meterops credit",
                    grant_amount={"amount": credit.amount_minor, "credit_type_id": credit_type},
                    paid_amount={"amount": 0, "credit_type_id": credit_type},
                    priority=GRANT_PRIORITY,
                    effective_at=iso_utc(start),
                    expires_at=iso_utc(start + GRANT_LIFETIME),
                    reason=f"{credit.reason_code} ({credit.reference})",
                    credit_grant_type="meterops_credit",
                    uniqueness_key=credit.idempotency_key,
                )
            )
        except metronome.ConflictError as exc:
            grant = self._grant_by_key(metronome_id, credit.idempotency_key)
            if grant is None:
                raise ProviderError(
                    "Metronome already used this credit's uniqueness key for a grant it no "
                    f"longer lists (voided?): {exc}"
                ) from exc
            return CreditResult(
                credit_id=grant["id"], route=CreditRoute.CREDIT_GRANT, response=grant
            )
        except metronome.BadRequestError as exc:
            raise ProviderError(f"Metronome refused the credit grant: {exc}") from exc
        data = body.get("data") or {}
        return CreditResult(
            credit_id=data.get("id", ""), route=CreditRoute.CREDIT_GRANT, response=body
        )
