"""The Amberflo adapter, on Amberflo's documented REST API with httpx.

Not on the official `amberflo-metering-python` package: it installs a top-level package named
`metering`, which is our metering app's name, so inside Meterops `import metering.ingest`
finds our app and the SDK cannot be imported (installed beside it, it would also shadow our
app wherever the project root is not first on sys.path). The SDK also takes `meterValue` only
as int or float. It is a thin `requests` wrapper over the same endpoints; this module calls
them as it does (X-API-KEY header, the paths and payloads of its `ingest`, `customer`, `usage`
and `customer_product_invoice` modules) and writes values as exact JSON numbers.

What Amberflo documents (docs.amberflo.io, the SDKs' source), and how the adapter and the
push ledger honour it:

- Usage is `POST /ingest` with a list of meter records `{uniqueId, customerId, meterApiName,
  meterValue, meterTimeInMillis, dimensions}`; the answer is 200 with a text ("2 records were
  ingested"), the same whether a record was new or a repeat. No maximum per request is
  documented; the official SDKs send batches of 100, and so do we.
- Deduplication: "it discards duplicate meter events unless any attribute (e.g. timestamp,
  dimension) differs" (the SDK: two records with the same name, time and uniqueId are deduped
  by the server); the ledger resends the very same record, so a repeat is dropped. How long
  Amberflo remembers a record is not documented: PlatformRules.key_retention 24 hours (events
  older than 24 hours are processed "within 24 hours", outside the real-time pipeline), after
  which the read-back decides what became of an entry whose answer was lost, as for Stripe.
- Timestamps: no past limit ("you can backfill as many meter events as you like"; events older
  than 24 hours take up to 24 hours to show in usage); no future limit is documented.
- Rate limits: none published. A 429 (and 5xx, network errors) is retried with backoff,
  honouring Retry-After up to `retry_after_cap` (AMBERFLO_RETRY_AFTER_MAX); a longer wait
  halts the run. Another 4xx refuses the request as a whole (the SDK retries the same set).
- Customers are ours: `customerId` is our account's external id (`GET /customers?customerId=`
  answers the customer or `{}`; `POST /customers` creates it), so nothing is stored on the
  account. Meters are `POST /meters` `{meterApiName, label, meterType}`: `sum_of_all_usage`,
  or `max_usage` for period-to-date values; found again by meterApiName (`GET /meters`),
  which is also the provider meter id (every usage and invoice API names meters by it).
- Read-back is `POST /usage` `{meterApiName, aggregation SUM|MAX, timeGroupingInterval DAY,
  timeRange {startTimeInSeconds, endTimeInSeconds}, filter and groupBy customerId}`: buckets
  are UTC days (`secondsSinceEpochUtc`), gaps filled with 0: read_window "utc_day".
- Invoices `GET /payments/billing/customer-product-invoice/all?customerId=&productId=1`
  (amounts in the currency's units, `totalBill.totalPrice`; one line per product item, which
  names its meterApiName); the running period's invoice (`...?latest=true`) is the platform's
  own preview of the upcoming invoice, so it is `upcoming_invoice`, not listed with the others.
- Corrections: Amberflo cancels ingested records (filtering rules by uniqueId, or a record
  with the dimension `aflo_cancel_previous_resource_event`); whether a negative meterValue is
  accepted is not documented (the SDK does not refuse one). Credits: promotions are predefined
  objects applied by id and prepaid orders are purchases, neither an amount credited once per
  key: create_credit is not built (the base class refuses).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from billing.money import to_minor_units
from billing.providers.base import (
    BillingProvider,
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
from billing.providers.orb import json_number
from billing.providers.retry import RetryPolicy

DEFAULT_BASE_URL = "https://app.amberflo.io"
INGEST_BATCH = 100
DEFAULT_RETRY_AFTER_CAP = 30.0
# Amberflo's default product (the SDKs' DEFAULT_PRODUCT_ID).
PRODUCT_ID = "1"
# Invoices are in the account's base currency; Amberflo's default is USD.
CURRENCY = "USD"
EVENT_PREFIX = "mo_"

AMBERFLO_RULES = PlatformRules(
    key_field="uniqueId",
    key_retention=timedelta(hours=24),
    past_window=None,
    future_tolerance=timedelta(minutes=5),
    batch_size=INGEST_BATCH,
    rate_limit_per_second=None,
    read_window="utc_day",
    max_value_digits=None,
    corrections="cancel the ingested record (filtering rules by uniqueId, or a record with the "
    "dimension aflo_cancel_previous_resource_event) and send the right one",
)


class AmberfloBackoff(ProviderUnavailable):
    """Amberflo asked us to wait longer than we may while holding the push lock."""


class AmberfloAPIError(Exception):
    """An answer of 400 or more from Amberflo (`response` holds its headers)."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}: {response.text[:300]}")
        self.status_code = response.status_code
        self.response = response


def _number(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _seconds(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


class AmberfloProvider(RetryPolicy, BillingProvider):
    name = "amberflo"
    platform = "Amberflo"
    backoff_error = AmberfloBackoff
    customer_by_external_id = True
    rules = AMBERFLO_RULES

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = "",
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        batch_size: int = INGEST_BATCH,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ProviderMisconfigured("AMBERFLO_API_KEY is not set.")
        self.client = httpx.Client(
            base_url=(base_url or DEFAULT_BASE_URL).rstrip("/"),
            headers={
                "X-API-KEY": api_key,
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            timeout=30.0,
        )
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.batch_size = min(batch_size, INGEST_BATCH)
        self._customers: set[str] = set()
        self._meters: dict[str, dict] | None = None

    # --- HTTP and the one retry policy (billing/providers/retry.py) --------------------------

    def _send(self, method: str, path: str, *, body=None, params: dict | None = None):
        response = self.client.request(
            method,
            path,
            params=params,
            content=None if body is None else json.dumps(body).encode(),
        )
        if response.status_code >= 400:
            raise AmberfloAPIError(response)
        if "json" not in response.headers.get("Content-Type", ""):
            return response.text
        return json.loads(response.content or b"null", parse_float=Decimal)

    def _request(self, method: str, path: str, *, body=None, params: dict | None = None):
        """One API call through the retry policy: the parsed JSON answer (decimals exact), or
        the text of a non-JSON answer (the ingest's)."""
        return self._call(self._send, method, path, body=body, params=params)

    def _not_retried(self, exc: Exception) -> BaseException | None:
        if isinstance(exc, httpx.TransportError):
            return None
        if isinstance(exc, AmberfloAPIError):
            if exc.status_code in (401, 403):
                return ProviderMisconfigured(f"Amberflo refused our key: {exc}")
            if exc.status_code == 429 or exc.status_code >= 500:
                return None
        return exc

    # --- customers and meters ----------------------------------------------------------------

    def _customer_exists(self, customer_id: str) -> bool:
        if customer_id not in self._customers:
            found = self._request("GET", "/customers", params={"customerId": customer_id})
            if not (isinstance(found, dict) and found.get("customerId")):
                return False
            self._customers.add(customer_id)
        return True

    def lookup_customer(self, *, external_id: str, existing_id: str = "") -> str:
        return external_id if self._customer_exists(external_id) else ""

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        if self._customer_exists(external_id):
            return external_id
        if self.read_only:
            return ""
        self._request(
            "POST",
            "/customers",
            body={"customerId": external_id, "customerName": name or external_id},
        )
        self._customers.add(external_id)
        return external_id

    def _meter(self, api_name: str, *, fresh: bool = False) -> dict | None:
        if self._meters is None or fresh:
            rows = self._request("GET", "/meters") or []
            self._meters = {m["meterApiName"]: m for m in rows}
        return self._meters.get(api_name)

    @staticmethod
    def _info(meter: dict) -> ProviderMeterInfo:
        return ProviderMeterInfo(
            provider_meter_id=meter["meterApiName"],
            event_name=meter["meterApiName"],
            aggregation="last" if meter.get("meterType") == "max_usage" else "sum",
        )

    def find_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo | None:
        meter = self._meter(spec.event_name, fresh=True)
        return None if meter is None else self._info(meter)

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        if self.read_only:
            raise ProviderMisconfigured("Amberflo is the read-only secondary platform here.")
        found = self.find_meter(spec=spec)
        if found is not None:
            return found
        meter = self._request(
            "POST",
            "/meters",
            body={
                "meterApiName": spec.event_name,
                "label": spec.display_name,
                "meterType": "max_usage" if spec.aggregation == "last" else "sum_of_all_usage",
            },
        )
        self._meters[meter["meterApiName"]] = meter
        return self._info(meter)

    # --- usage ---------------------------------------------------------------------------------

    @staticmethod
    def _record(item: UsageItem) -> dict:
        return {
            "uniqueId": item.identifier,
            "customerId": item.customer_id,
            "meterApiName": item.event_name,
            "meterValue": json_number(item.value),
            "meterTimeInMillis": int(item.timestamp.timestamp() * 1000),
        }

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        if self.read_only:
            raise ProviderMisconfigured("Amberflo is the read-only secondary platform here.")
        results: list[ItemResult] = []
        for start in range(0, len(items), self.batch_size):
            results.extend(self._ingest(list(items[start : start + self.batch_size])))
        return results

    def _ingest(self, items: list[UsageItem]) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        try:
            answer = self._request("POST", "/ingest", body=[self._record(i) for i in items])
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except AmberfloAPIError as exc:
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
        # A repeat is dropped by Amberflo and answered like a new record: RECORDED either way.
        response = {"api": "ingest", "answer": str(answer)[:200]}
        return [ItemResult(i.identifier, ItemStatus.RECORDED, response=response) for i in items]

    # --- reads ---------------------------------------------------------------------------------

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """Per UTC day (`timeGroupingInterval` DAY: Amberflo's buckets start at UTC midnight)."""
        meter = self._meter(provider_meter_id)
        aggregation = "MAX" if meter and meter.get("meterType") == "max_usage" else "SUM"
        report = self._request(
            "POST",
            "/usage",
            body={
                "meterApiName": provider_meter_id,
                "aggregation": aggregation,
                "timeGroupingInterval": "DAY",
                "timeRange": {
                    "startTimeInSeconds": int(start.timestamp()),
                    "endTimeInSeconds": int(end.timestamp()),
                },
                "filter": {"customerId": [customer_id]},
                "groupBy": ["customerId"],
            },
        )
        for group in (report or {}).get("clientMeters") or []:
            info = ((group.get("group") or {}).get("groupInfo")) or {}
            if info.get("customerId", customer_id) != customer_id:
                continue
            for bucket in group.get("values") or []:
                value = _number(bucket.get("value"))
                day = _seconds(bucket["secondsSinceEpochUtc"])
                if not value or not start <= day < end:
                    continue
                yield MeterSummary(
                    provider_meter_id=provider_meter_id,
                    customer_id=customer_id,
                    start=day,
                    end=day + timedelta(days=1),
                    value=value,
                )

    def _invoice_params(self, customer_id: str, **extra) -> dict:
        return {
            "customerId": customer_id,
            "productId": PRODUCT_ID,
            "fromCache": "true",
            "withPaymentStatus": "true",
            **extra,
        }

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        """The customer's invoices whose period has ended (the running one is the preview)."""
        if not self._customer_exists(customer_id):
            return
        rows = self._request(
            "GET",
            "/payments/billing/customer-product-invoice/all",
            params=self._invoice_params(customer_id),
        )
        now = datetime.now(UTC)
        for row in rows or []:
            invoice = self._invoice(row, customer_id)
            if invoice.period_end is not None and invoice.period_end > now:
                continue
            if created_since is not None and (invoice.created or now) < created_since:
                continue
            yield invoice

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        if not self._customer_exists(customer_id):
            return None
        row = self._request(
            "GET",
            "/payments/billing/customer-product-invoice",
            params=self._invoice_params(customer_id, latest="true", fromCache="false"),
        )
        if not (isinstance(row, dict) and row.get("invoiceKey")):
            return None
        return self._invoice(row, customer_id)

    @staticmethod
    def _invoice_id(row: dict, customer_id: str) -> str:
        if row.get("invoiceUri"):
            return row["invoiceUri"]
        key = row.get("invoiceKey") or {}
        return (
            f"{customer_id}/{key.get('productPlanId', '')}/"
            f"{key.get('year')}-{key.get('month')}-{key.get('day')}"
        )

    def _invoice(self, row: dict, customer_id: str) -> InvoiceData:
        invoice_id = self._invoice_id(row, customer_id)
        lines = []
        for item in row.get("productItemInvoices") or []:
            bill = item.get("totalBill") or {}
            meter = item.get("meterApiName") or ""
            lines.append(
                InvoiceLineData(
                    line_id=f"{invoice_id}#{item.get('productItemId', len(lines))}",
                    description=item.get("productItemName") or meter,
                    quantity=None
                    if bill.get("meterUnits") is None
                    else _number(bill["meterUnits"]),
                    amount_minor=to_minor_units(_number(bill.get("price")), CURRENCY),
                    price_id=item.get("productItemId") or "",
                    period_start=_seconds(bill.get("startTimeInSeconds")),
                    period_end=_seconds(bill.get("endTimeInSeconds")),
                    raw=item,
                    meter_code=meter.removeprefix(EVENT_PREFIX)
                    if meter.startswith(EVENT_PREFIX)
                    else "",
                )
            )
        start = _seconds(row.get("invoiceStartTimeInSeconds"))
        end = _seconds(row.get("invoiceEndTimeInSeconds"))
        return InvoiceData(
            invoice_id=invoice_id,
            customer_id=customer_id,
            number="",
            status=row.get("paymentStatus") or row.get("invoicePriceStatus") or "",
            currency=CURRENCY,
            total_minor=to_minor_units(
                _number((row.get("totalBill") or {}).get("totalPrice")), CURRENCY
            ),
            period_start=start,
            period_end=end,
            created=_seconds(row.get("paymentCreatedInSeconds")) or end,
            lines=lines,
            raw={k: v for k, v in row.items() if k != "productItemInvoices"},
        )
