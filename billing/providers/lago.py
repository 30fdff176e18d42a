"""The Lago adapter: the only module that imports the `lago_python_client` SDK (PyPI
`lago-python-client`).

What Lago documents (its API reference and the getlago/lago-api source), and how the adapter
and the push ledger honour it:

- Usage is `POST /api/v1/events/batch` with at most 100 events `{transaction_id,
  external_subscription_id, code, timestamp, properties}`. Meterops names the subscription by
  the account's external id: the team's Lago subscription for the account has that
  `external_id` (the customer too). Values go as decimal strings in `properties.value` (Lago
  casts the aggregated field to a decimal), so no digit is lost.
- `transaction_id` is unique per subscription, for good (a unique index): a repeat answers
  422 `value_already_exist` (PlatformRules.key_retention None: the ledger resends an entry
  whose answer was lost however late, and the repeat is answered DUPLICATE, i.e. counted).
- A batch is validated as a whole: one invalid event answers 422 with `error_details` by
  index and none of the batch is saved. The adapter answers the refused events (duplicate,
  or refused for good) and sends the others again in a batch of their own.
- Rate limit: 429 with `x-ratelimit-*` headers (`x-ratelimit-reset`: seconds until the
  window resets). The SDK's own rate-limit retry is turned off; the adapter retries 429, 5xx
  and network errors with backoff, honouring the reset up to `retry_after_cap`
  (LAGO_RETRY_AFTER_MAX); a longer wait halts the run.
- Customers `POST /customers` (create or update by `external_id`, timezone UTC); billable
  metrics `GET|POST /billable_metrics` (code = our event name, `sum_agg` over `value`, and
  `max_agg` for period-to-date values).
- Read-back is per billing period only: `GET /customers/{id}/current_usage?
  external_subscription_id=` and `.../past_usage` (per closed period, per billable metric).
  There is no per-day read: PlatformRules.read_window is "period", and a summary spans a
  whole billing period.
- Invoices `GET /invoices?external_customer_id=` (page-numbered), with their fees; the
  upcoming-invoice preview is the current usage's amounts.
- Credits are granted (free) credits on the customer's Meterops wallet (`POST /wallets` once,
  code `meterops_credits`, one credit = one unit of the currency; then `POST
  /wallet_transactions` with `granted_credits` as a decimal string and our key in its
  `metadata`): Lago deducts wallet credits from the next invoice after tax. Lago has no
  idempotency key, so the grant is looked up by that metadata (`GET
  /wallets/{id}/wallet_transactions`) before it is made, and never retried blindly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from lago_python_client.client import Client
from lago_python_client.exceptions import LagoApiError, LagoRateLimitError
from lago_python_client.models import BillableMetric, Customer
from lago_python_client.models.event import BatchEvent, Event
from lago_python_client.models.wallet import Wallet
from lago_python_client.models.wallet_transaction import WalletTransaction

from billing.providers.answers import parse_time
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
from billing.providers.retry import RetryPolicy, seconds

BATCH_MAX = 100
DEFAULT_RETRY_AFTER_CAP = 30.0
# Credits: the customer's one Meterops wallet (a wallet code is unique per customer) and the
# wallet transaction metadata key holding our credit's idempotency key.
WALLET_CODE = "meterops_credits"
CREDIT_KEY = "meterops_credit"

LAGO_RULES = PlatformRules(
    key_field="transaction_id",
    key_retention=None,
    # Lago documents no limit on an event's timestamp (none given: the time of receipt). Usage
    # of a period counts while its invoice is open or a draft (the grace period); a finalized
    # invoice is locked, so such usage is kept by Lago but not billed.
    past_window=None,
    future_tolerance=timedelta(minutes=5),
    batch_size=BATCH_MAX,
    rate_limit_per_second=500,
    read_window="period",
    max_value_digits=None,
    corrections="none in place: send another event (a negative value on a sum metric); "
    "an issued invoice is corrected by a credit note",
)


class LagoBackoff(ProviderUnavailable):
    """Lago asked us to wait longer than we may while holding the push lock."""


def _number(value) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _as_dict(obj) -> dict:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    return obj.dict()


def _errors(exc: LagoApiError) -> dict:
    response = exc.response if isinstance(exc.response, dict) else {}
    return response.get("error_details") or {}


class LagoProvider(RetryPolicy, BillingProvider):
    name = "lago"
    platform = "Lago"
    wait_source = "x-ratelimit-reset"
    backoff_error = LagoBackoff
    # 429, 5xx and network errors (status None); the others are sorted in _not_retried.
    retryable = (LagoApiError, httpx.TransportError)
    customer_by_external_id = True
    rules = LAGO_RULES

    def __init__(
        self,
        *,
        api_key: str,
        api_url: str = "",
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        batch_size: int = BATCH_MAX,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ProviderMisconfigured("LAGO_API_KEY is not set.")
        # The SDK's rate-limit retry off: the adapter's is the one retry policy.
        self.client = Client(
            api_key=api_key, api_url=api_url, max_retries=0, retry_on_rate_limit=False
        )
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.batch_size = min(batch_size, BATCH_MAX)
        self._customers: set[str] = set()

    # --- the one retry policy (billing/providers/retry.py) -----------------------------------

    def _requested_wait(self, exc: BaseException) -> float | None:
        return seconds(exc.reset) if isinstance(exc, LagoRateLimitError) else None

    def _not_retried(self, exc: Exception) -> BaseException | None:
        if not isinstance(exc, self.retryable):
            return exc
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return ProviderMisconfigured(f"Lago refused our key: {exc!r}")
        transient = status is None or status == 429 or status >= 500
        return None if transient else exc

    def _describe(self, exc: BaseException) -> str:
        return repr(exc)

    # --- customers and meters ----------------------------------------------------------------

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        if self.read_only:
            return external_id
        if external_id not in self._customers:
            # Lago's POST /customers creates or updates by external_id.
            self._call(
                self.client.customers.create,
                Customer(external_id=external_id, name=name or external_id, timezone="UTC"),
            )
            self._customers.add(external_id)
        return external_id

    def find_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo | None:
        try:
            metric = self._call(self.client.billable_metrics.find, spec.event_name)
        except LagoApiError as exc:
            if exc.status_code == 404:
                return None
            raise
        aggregation = "last" if metric.aggregation_type == "max_agg" else "sum"
        return ProviderMeterInfo(
            provider_meter_id=metric.code, event_name=spec.event_name, aggregation=aggregation
        )

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        if self.read_only:
            raise ProviderMisconfigured("Lago is the read-only secondary platform here.")
        found = self.find_meter(spec=spec)
        if found is not None:
            return found
        try:
            self._call(
                self.client.billable_metrics.create,
                BillableMetric(
                    name=spec.display_name,
                    code=spec.event_name,
                    description=f"Meterops meter {spec.meter_code}",
                    aggregation_type="max_agg" if spec.aggregation == "last" else "sum_agg",
                    field_name="value",
                    recurring=False,
                ),
            )
        except LagoApiError as exc:
            if exc.status_code != 422:  # 422 value_already_exist: made meanwhile
                raise
        return ProviderMeterInfo(
            provider_meter_id=spec.event_name,
            event_name=spec.event_name,
            aggregation=spec.aggregation,
        )

    # --- usage ---------------------------------------------------------------------------------

    @staticmethod
    def _event(item: UsageItem) -> Event:
        return Event(
            transaction_id=item.identifier,
            external_subscription_id=item.customer_id,
            code=item.event_name,
            timestamp=item.unix_timestamp,
            properties={"value": item.value_text},
        )

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        if self.read_only:
            raise ProviderMisconfigured("Lago is the read-only secondary platform here.")
        results: dict[str, ItemResult] = {}
        for start in range(0, len(items), self.batch_size):
            for result in self._batch(list(items[start : start + self.batch_size])):
                results[result.identifier] = result
        return [results[i.identifier] for i in items]

    def _batch(self, items: list[UsageItem]) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        try:
            self._call(
                self.client.events.batch_create,
                BatchEvent(events=[self._event(i) for i in items]),
            )
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except LagoApiError as exc:
            return self._batch_refused(items, exc)
        return [
            ItemResult(i.identifier, ItemStatus.RECORDED, response={"api": "events/batch"})
            for i in items
        ]

    def _batch_refused(self, items: list[UsageItem], exc: LagoApiError) -> list[ItemResult]:
        """A 4xx: Lago saved none of the batch. Events named in `error_details` (by index)
        are answered; the others go again in a batch of their own."""
        details = _errors(exc)
        by_index: dict[int, dict] = {}
        for key, errors in details.items():
            if str(key).isdigit() and int(key) < len(items):
                by_index[int(key)] = errors or {}
        if not by_index:
            return [
                ItemResult(
                    i.identifier,
                    ItemStatus.REJECTED,
                    code=str((exc.response or {}).get("code") or "request_invalid")
                    if isinstance(exc.response, dict)
                    else "request_invalid",
                    message=repr(exc)[:500],
                    response={"api": "events/batch", "http_status": exc.status_code},
                )
                for i in items
            ]
        out: list[ItemResult] = []
        for index, errors in by_index.items():
            item = items[index]
            flat = [str(e) for values in errors.values() for e in (values or [])]
            duplicate = flat and all(e == "value_already_exist" for e in flat)
            out.append(
                ItemResult(
                    item.identifier,
                    ItemStatus.DUPLICATE if duplicate else ItemStatus.REJECTED,
                    code="value_already_exist" if duplicate else "validation_errors",
                    message="; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items())[:500],
                    response={"api": "events/batch", "http_status": exc.status_code},
                )
            )
        rest = [item for n, item in enumerate(items) if n not in by_index]
        return out + (self._batch(rest) if rest else [])

    # --- reads ---------------------------------------------------------------------------------

    def _usage_periods(self, customer_id: str, metric_code: str) -> Iterator[dict]:
        """The subscription's billing periods as Lago reports them: the current one, then the
        closed ones (past_usage, newest first, every page)."""
        try:
            current = self._call(self.client.customers.current_usage, customer_id, customer_id)
        except LagoApiError as exc:
            if exc.status_code == 404:  # no such customer or subscription: nothing billed
                return
            raise
        yield _as_dict(current)
        page = 1
        while page:
            answer = self._call(
                self.client.customers.past_usage,
                customer_id,
                customer_id,
                {"billable_metric_code": metric_code, "page": page, "per_page": 100},
            )
            for period in answer.get("usage_periods") or []:
                yield _as_dict(period)
            page = (answer.get("meta") or {}).get("next_page")

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """One summary per billing period that overlaps [start, end), over the whole period
        (Lago has no finer read: the window is the period, never a day)."""
        for period in self._usage_periods(customer_id, provider_meter_id):
            period_start = parse_time(period.get("from_datetime"))
            period_end = parse_time(period.get("to_datetime"))
            if period_start is None or period_end is None:
                continue
            if period_end <= start or period_start >= end:
                continue
            value = sum(
                (
                    _number(c.get("units"))
                    for c in period.get("charges_usage") or []
                    if (c.get("billable_metric") or {}).get("code") == provider_meter_id
                ),
                Decimal(0),
            )
            if value:
                yield MeterSummary(
                    provider_meter_id=provider_meter_id,
                    customer_id=customer_id,
                    start=period_start,
                    end=period_end,
                    value=value,
                )

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        page = 1
        while page:
            options: dict = {"external_customer_id": customer_id, "page": page, "per_page": 100}
            if created_since is not None:
                options["issuing_date_from"] = created_since.date().isoformat()
            answer = self._call(self.client.invoices.find_all, options)
            for invoice in answer.get("invoices") or []:
                yield self._invoice(_as_dict(invoice), customer_id)
            page = (answer.get("meta") or {}).get("next_page")

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        """The current period's usage as Lago prices it (its `current_usage`)."""
        try:
            usage = _as_dict(
                self._call(self.client.customers.current_usage, customer_id, customer_id)
            )
        except LagoApiError as exc:
            if exc.status_code == 404:
                return None
            raise
        period_start = parse_time(usage.get("from_datetime"))
        period_end = parse_time(usage.get("to_datetime"))
        lines = [
            InvoiceLineData(
                line_id=f"upcoming-{customer_id}-{n}",
                description=(charge.get("billable_metric") or {}).get("name") or "",
                quantity=_number(charge.get("units")),
                amount_minor=int(charge.get("amount_cents") or 0),
                price_id=(charge.get("charge") or {}).get("lago_id") or "",
                period_start=period_start,
                period_end=period_end,
                raw=charge,
                meter_code=self._meter_code((charge.get("billable_metric") or {}).get("code")),
            )
            for n, charge in enumerate(usage.get("charges_usage") or [])
        ]
        return InvoiceData(
            invoice_id=f"upcoming-{customer_id}",
            customer_id=customer_id,
            number="",
            status="upcoming",
            currency=(usage.get("currency") or "USD").upper(),
            total_minor=int(usage.get("total_amount_cents") or 0),
            period_start=period_start,
            period_end=period_end,
            created=None,
            lines=lines,
            raw={k: v for k, v in usage.items() if k != "charges_usage"},
        )

    def _meter_code(self, metric_code: str | None) -> str:
        if not metric_code:
            return ""
        from billing.models import ProviderMeter

        mapping = (
            ProviderMeter.objects.filter(provider=self.name, provider_meter_id=metric_code)
            .select_related("meter")
            .first()
        )
        return mapping.meter.code if mapping else ""

    def _invoice(self, invoice: dict, customer_id: str) -> InvoiceData:
        currency = (invoice.get("currency") or "USD").upper()
        lines = []
        for fee in invoice.get("fees") or []:
            item = fee.get("item") or {}
            code = item.get("code") if item.get("type") == "charge" else ""
            lines.append(
                InvoiceLineData(
                    line_id=fee.get("lago_id") or f"{invoice.get('lago_id')}-{len(lines)}",
                    description=item.get("name") or "",
                    quantity=None if fee.get("units") is None else _number(fee["units"]),
                    amount_minor=int(fee.get("amount_cents") or 0),
                    price_id=fee.get("lago_charge_id") or "",
                    period_start=parse_time(fee.get("from_date")),
                    period_end=parse_time(fee.get("to_date")),
                    raw=fee,
                    meter_code=self._meter_code(code),
                )
            )
        starts = [line.period_start for line in lines if line.period_start]
        ends = [line.period_end for line in lines if line.period_end]
        return InvoiceData(
            invoice_id=invoice.get("lago_id") or "",
            customer_id=customer_id,
            number=invoice.get("number") or "",
            status=invoice.get("status") or "",
            currency=currency,
            total_minor=int(invoice.get("total_amount_cents") or 0),
            period_start=min(starts, default=None),
            period_end=max(ends, default=None),
            created=parse_time(invoice.get("issuing_date")),
            lines=lines,
            raw={k: v for k, v in invoice.items() if k != "fees"},
        )

    # --- credits ([7]): granted wallet credits --------------------------------------------------

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """Granted (free) credits on the customer's Meterops wallet: Lago deducts wallet
        credits from the next subscription invoice after tax, so its total due is lowered by
        exactly the amount (a coupon is deducted before tax: with VAT it lowers the total by
        more; a credit note needs an invoice's fees and Lago's premium licence). The balance
        left over carries to the invoices after. A credit on an invoiced period
        (`invoice_id` set) lowers the next invoice too, as Orb's does.

        Lago has no idempotency key: the credit is found again by our key in the wallet
        transaction's metadata before it is granted, and a failed or lost grant is never
        retried blindly (it is looked up again first)."""
        from billing.money import from_minor_units

        if self.read_only:
            raise ProviderMisconfigured("Lago is the read-only secondary platform here.")
        if credit.amount_minor <= 0:
            raise ProviderError("A Lago credit must be a positive amount.")
        wallet = self._credit_wallet(credit)
        if Decimal(str(wallet.get("rate_amount") or "0")) != 1:
            raise ProviderError(
                f"The Lago wallet {WALLET_CODE} of {credit.customer_id} values a credit at "
                f"{wallet.get('rate_amount')}, not 1 {wallet.get('currency')}: grant this "
                "credit in Lago itself."
            )
        if (wallet.get("currency") or "").upper() != credit.currency.upper():
            raise ProviderError(
                f"The Lago wallet of {credit.customer_id} is in {wallet.get('currency')}, "
                f"the credit in {credit.currency}."
            )
        granted = format(from_minor_units(credit.amount_minor, credit.currency), "f")
        metadata = [
            {"key": CREDIT_KEY, "value": credit.idempotency_key},
            *({"key": k, "value": str(v)} for k, v in credit.provider_metadata().items()),
        ]
        attempt = 0
        while True:
            found = self._credit_transaction(wallet["lago_id"], credit.idempotency_key)
            if found is not None:
                return CreditResult(
                    credit_id=found.get("lago_id") or "",
                    route=CreditRoute.WALLET_GRANT,
                    response=found,
                )
            try:
                answer = self._call_once(
                    self.client.wallet_transactions.create,
                    WalletTransaction(
                        wallet_id=wallet["lago_id"],
                        granted_credits=granted,
                        name=credit.description[:255],
                        metadata=metadata,
                    ),
                )
            except ProviderUnavailable as exc:
                # The grant may have been made and its answer lost: look it up, then retry.
                if attempt >= self.max_retries:
                    raise
                delay = self._delay(exc.__cause__ or exc, attempt)
                self.retries += 1
                self.slept.append(delay)
                self._sleep(delay)
                attempt += 1
                continue
            except LagoApiError as exc:
                raise ProviderError(f"Lago refused the credit: {exc!r}") from exc
            rows = [_as_dict(t) for t in answer.get("wallet_transactions") or []]
            mine = [t for t in rows if _number(t.get("credit_amount")) == Decimal(granted)]
            row = (mine or rows or [{}])[0]
            return CreditResult(
                credit_id=row.get("lago_id") or "", route=CreditRoute.WALLET_GRANT, response=row
            )

    def _call_once(self, fn: Callable, *args):
        """One request, never repeated by the retry policy (a transient failure raises
        ProviderUnavailable at once): for a create Lago cannot deduplicate."""
        retries, self.max_retries = self.max_retries, 0
        try:
            return self._call(fn, *args)
        finally:
            self.max_retries = retries

    def _credit_wallet(self, credit: CreditRequest) -> dict:
        """The customer's Meterops wallet (code `meterops_credits`, one credit = one unit of
        the currency), created on the first credit. The code is unique per customer, so a
        repeated create answers 422 and the wallet is found again."""
        found = self._find_wallet(credit.customer_id)
        if found is not None:
            return found
        try:
            wallet = self._call(
                self.client.wallets.create,
                Wallet(
                    external_customer_id=credit.customer_id,
                    name="Meterops credits",
                    code=WALLET_CODE,
                    rate_amount="1",
                    currency=credit.currency.upper(),
                ),
            )
        except LagoApiError as exc:
            found = self._find_wallet(credit.customer_id) if exc.status_code == 422 else None
            if found is None:
                raise ProviderError(f"Lago refused the Meterops wallet: {exc!r}") from exc
            return found
        return _as_dict(wallet)

    def _find_wallet(self, customer_id: str) -> dict | None:
        page = 1
        while page:
            try:
                answer = self._call(
                    self.client.wallets.find_all,
                    {"external_customer_id": customer_id, "page": page, "per_page": 100},
                )
            except LagoApiError as exc:
                if exc.status_code == 404:
                    return None
                raise
            for wallet in answer.get("wallets") or []:
                wallet = _as_dict(wallet)
                if wallet.get("code") == WALLET_CODE:
                    if wallet.get("status") != "active":
                        raise ProviderError(
                            f"The Lago wallet {WALLET_CODE} of {customer_id} is "
                            f"{wallet.get('status')}: credits cannot be granted on it."
                        )
                    return wallet
            page = (answer.get("meta") or {}).get("next_page")
        return None

    def _credit_transaction(self, wallet_id: str, key: str) -> dict | None:
        """The wallet's inbound transaction whose metadata carries our credit's key."""
        page = 1
        while page:
            answer = self._call(
                self.client.wallet_transactions.find_all,
                wallet_id,
                {"transaction_type": "inbound", "page": page, "per_page": 100},
            )
            for row in answer.get("wallet_transactions") or []:
                row = _as_dict(row)
                pairs = {m.get("key"): m.get("value") for m in row.get("metadata") or []}
                if pairs.get(CREDIT_KEY) == key and row.get("status") != "failed":
                    return row
            page = (answer.get("meta") or {}).get("next_page")
        return None
