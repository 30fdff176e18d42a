"""The Stripe adapter: the only module that imports the `stripe` SDK.

- The API version is pinned here (STRIPE_API_VERSION), not taken from the SDK, so an SDK
  upgrade cannot change the shape of what we read.
- `STRIPE_API_BASE`, when set, replaces the SDK's base addresses (the REST API and the meter
  event stream host) so the adapter can talk to a Stripe-compatible test server.
- Usage goes through the v2 meter event stream (100 events per request, authenticated by a
  15-minute meter event session) when a call has at least `v2_threshold` items, and through
  v1 `POST /v1/billing/meter_events` (form-encoded, one event per call, a synchronous answer
  per event) otherwise, or when Stripe refuses a whole v2 request (so each item still gets
  its own answer).
- 429 answers (and 5xx and network errors) are retried with exponential backoff, honouring
  Retry-After up to `retry_after_cap` seconds (STRIPE_RETRY_AFTER_MAX): a longer wait stops
  the run (`halted`), leaving the rest pending for the next run rather than holding the push
  lock; every retry sends the same identifier and the same idempotency key. The SDK's own
  retries are off so that this is the one retry policy.
- `Stripe-Should-Retry` is obeyed: `false` (a 500 Stripe saved for the idempotency key, which
  every retry of that key would only replay) is not retried; the item is answered RETRY with
  a *new* idempotency key (`next_idempotency_key`) for the next attempt. The identifier stays
  the same, so if Stripe did record the event the new key gets "already exists" (counted).
- A 409 `idempotency_error` (a request with the same key still in flight) is not retried in
  this run: RETRY, the entry stays pending for the next run.
- An expired meter event session (401 `billing_meter_event_session_expired`, raised by the
  SDK as TemporarySessionExpiredError) is renewed and the request sent again, once.
- v1 answers a repeated identifier with a 400 that has no error code, only the message "An
  event already exists with identifier ...": that is DUPLICATE (Stripe counted it), not a
  refusal.
- The v2 stream validates asynchronously (errors come later in a meter error report), so an
  item the stream would refuse (timestamp outside the window, more than 15 significant
  digits) is never sent there: it goes through v1 for a synchronous answer.
- Amounts and quantities are read from the raw JSON as decimals (the SDK parses numbers into
  floats).
- The upcoming-invoice preview is `POST /v1/invoices/create_preview` (the pinned version has no
  `GET /v1/invoices/upcoming`: it was removed in 2025-03-31.basil, and since then a preview
  names the subscription, not only the customer). The customer's subscriptions are listed
  (`GET /v1/subscriptions?customer=`, not canceled ones) and the first one with something
  upcoming is previewed; Stripe's `invoice_upcoming_none` (nothing to preview) is None.
- `timeout` (seconds) bounds each HTTP request when set (the SDK's own default is 80 s): a page
  that reads a preview must not hang on a slow platform.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import stripe

from billing.providers.base import (
    CREDIT_NOTE_REASONS,
    FUTURE_TOLERANCE,
    MAX_VALUE_DIGITS,
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
    ProviderMisconfigured,
    ProviderUnavailable,
    UsageItem,
    WebhookSignatureError,
    next_idempotency_key,
    significant_digits,
)
from billing.providers.retry import RetryPolicy, seconds

STRIPE_API_VERSION = "2026-10-28.endive"
V2_BATCH_SIZE = 100  # the v2 meter event stream takes at most 100 events per request
DEFAULT_V2_THRESHOLD = 10
PAGE_SIZE = 100
DAY_SECONDS = 86_400
# Renew the meter event session this long before Stripe says it expires.
SESSION_MARGIN = timedelta(seconds=60)
WEBHOOK_TOLERANCE_SECONDS = 300

# Error codes Stripe answers for a meter event, as we treat them.
TOO_OLD_CODES = {"timestamp_too_far_in_past"}
DUPLICATE_CODES = {"resource_already_exists", "duplicate_meter_event"}
# v1's answer to a repeated identifier: a 400 without an error code, only this message.
DUPLICATE_MESSAGE = re.compile(r"already exists with identifier", re.IGNORECASE)
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"
# create_preview's answer when the customer (or subscription) has no invoice to preview.
UPCOMING_NONE_CODE = "invoice_upcoming_none"
# Subscriptions that will not invoice again.
ENDED_SUBSCRIPTION_STATUSES = {"canceled", "incomplete_expired"}
DEFAULT_RETRY_AFTER_CAP = 30.0


class _NoRetry(ProviderUnavailable):
    """Stripe said `Stripe-Should-Retry: false` for a transient failure: retrying the same
    idempotency key would only replay the saved answer."""


class _InFlight(ProviderUnavailable):
    """409: a request with the same idempotency key is still being processed."""


class ProviderBackoff(ProviderUnavailable):
    """Stripe asked us to wait longer than we may while holding the push lock."""


def _header(headers, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return value
    return None


def _exact(response) -> dict:
    """The response body parsed with decimals for every number with a fraction."""
    raw = getattr(response, "last_response", None)
    if raw is None or not raw.body:
        return {}
    return json.loads(raw.body, parse_float=Decimal)


def _ts(value) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class StripeProvider(RetryPolicy, BillingProvider):
    name = "stripe"
    platform = "Stripe"
    backoff_error = ProviderBackoff
    retryable = (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError)
    stores_customer_on_account = True
    # Bounds that are not UTC midnights are asked without a grouping window (one summary).
    exact_summary_bounds = True

    def __init__(
        self,
        *,
        api_key: str,
        api_base: str = "",
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        v2_threshold: int = DEFAULT_V2_THRESHOLD,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        key_prefix: str | Callable[[], str] = "",
        timeout: float | None = None,
    ) -> None:
        if not api_key:
            raise ProviderMisconfigured("STRIPE_API_KEY is not set.")
        base = api_base.rstrip("/")
        self.client = stripe.StripeClient(
            api_key,
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": base, "meter_events": base} if base else None,
            max_network_retries=0,
            http_client=stripe.new_default_http_client(timeout=timeout) if timeout else None,
        )
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.v2_threshold = v2_threshold
        # Installation prefix for the idempotency keys of customers and meters (a callable is
        # read on first use, so building the adapter needs no database).
        self._key_prefix = key_prefix
        self._clock = clock
        self._session_token: str | None = None
        self._session_expires: float = 0.0

    # --- the one retry policy (billing/providers/retry.py) -----------------------------------

    def key_prefix(self) -> str:
        if callable(self._key_prefix):
            self._key_prefix = self._key_prefix()
        return self._key_prefix

    def _requested_wait(self, exc: BaseException) -> float | None:
        return seconds(_header(getattr(exc, "headers", None), "Retry-After"))

    def _describe(self, exc: BaseException) -> str:
        return str(exc.user_message or exc)

    def _not_retried(self, exc: Exception) -> BaseException | None:
        if isinstance(exc, (stripe.AuthenticationError, stripe.PermissionError)):
            return ProviderMisconfigured(f"Stripe refused our key: {exc.user_message}")
        if not isinstance(exc, (*self.retryable, stripe.IdempotencyError)):
            # TemporarySessionExpiredError (v2 stream, 401) goes up as it is: the stream
            # renews the session and sends again.
            return exc
        status = getattr(exc, "http_status", None)
        if status == 409:
            return _InFlight(f"Stripe: {self._describe(exc)}")
        if isinstance(exc, stripe.IdempotencyError):
            return exc
        should_retry = _header(getattr(exc, "headers", None), "Stripe-Should-Retry")
        if isinstance(exc, stripe.APIError) and status is not None and status < 500:
            if should_retry != "true":
                return exc
        if should_retry == "false":
            return _NoRetry(f"Stripe: {self._describe(exc)}")
        return None

    # --- customers and meters ----------------------------------------------------------------

    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        if existing_id:
            return existing_id
        customer = self._call(
            self.client.v1.customers.create,
            {"name": name or external_id, "metadata": {"meterops_account": external_id}},
            # A crash before we store the id must not create a second customer on retry.
            {"idempotency_key": f"mo-{self.key_prefix()}-customer-{external_id}"[:255]},
        )
        return customer.id

    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        for meter in self._meters():
            if meter.get("event_name") == spec.event_name:
                return ProviderMeterInfo(
                    provider_meter_id=meter["id"],
                    event_name=spec.event_name,
                    aggregation=meter.get("default_aggregation", {}).get("formula", ""),
                )
        meter = self._call(
            self.client.v1.billing.meters.create,
            {
                "display_name": spec.display_name,
                "event_name": spec.event_name,
                "default_aggregation": {"formula": spec.aggregation},
                "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
                "value_settings": {"event_payload_key": "value"},
            },
            {"idempotency_key": f"mo-{self.key_prefix()}-meter-{spec.event_name}"},
        )
        return ProviderMeterInfo(
            provider_meter_id=meter.id, event_name=spec.event_name, aggregation=spec.aggregation
        )

    def _meters(self) -> Iterator[dict]:
        params: dict = {"limit": PAGE_SIZE, "status": "active"}
        while True:
            page = _exact(self._call(self.client.v1.billing.meters.list, params))
            yield from page.get("data", [])
            if not page.get("has_more") or not page.get("data"):
                return
            params["starting_after"] = page["data"][-1]["id"]

    # --- usage ---------------------------------------------------------------------------------

    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        results: dict[int, ItemResult] = {}
        # The v2 stream validates asynchronously: what it would refuse goes through v1, so
        # it gets a synchronous answer instead of a silent drop.
        safe = [i for i, item in enumerate(items) if self._stream_accepts(item)]
        if len(safe) < self.v2_threshold:
            safe = []
        safe_set = set(safe)
        for index, item in enumerate(items):
            if index not in safe_set:
                results[index] = self._report_v1(item)
        for start in range(0, len(safe), V2_BATCH_SIZE):
            chunk = safe[start : start + V2_BATCH_SIZE]
            for index, result in zip(
                chunk, self._report_v2([items[i] for i in chunk]), strict=True
            ):
                results[index] = result
        return [results[i] for i in range(len(items))]

    def _stream_accepts(self, item: UsageItem) -> bool:
        """Whether the v2 stream's (asynchronous) validation would accept the item's value and
        timestamp. Margins keep clock skew on our side."""
        now = datetime.fromtimestamp(self._clock(), tz=UTC)
        margin = timedelta(minutes=1)
        return (
            significant_digits(item.value) <= MAX_VALUE_DIGITS
            and now - PUSH_WINDOW + margin <= item.timestamp <= now + FUTURE_TOLERANCE - margin
        )

    def _report_v1(self, item: UsageItem) -> ItemResult:
        if self.halted:
            return ItemResult(item.identifier, ItemStatus.RETRY, message=self.halted)
        params = {
            "event_name": item.event_name,
            "identifier": item.identifier,
            "payload": {"stripe_customer_id": item.customer_id, "value": item.value_text},
            "timestamp": item.unix_timestamp,
        }
        try:
            event = self._call(
                self.client.v1.billing.meter_events.create,
                params,
                {"idempotency_key": item.idempotency_key},
            )
        except _NoRetry as exc:
            # A 500 saved for this key: the same key would only replay it. Next time, a new
            # key with the same identifier (Stripe's identifier dedupe still holds).
            return ItemResult(
                item.identifier,
                ItemStatus.RETRY,
                code="saved_server_error",
                message=str(exc),
                response={"api": "v1", "should_retry": False},
                next_idempotency_key=next_idempotency_key(item.idempotency_key),
            )
        except _InFlight as exc:
            return ItemResult(
                item.identifier,
                ItemStatus.RETRY,
                code="idempotency_key_in_flight",
                message=str(exc),
                response={"api": "v1", "http_status": 409},
            )
        except ProviderUnavailable as exc:
            return ItemResult(item.identifier, ItemStatus.RETRY, message=str(exc))
        except stripe.IdempotencyError as exc:
            return ItemResult(
                item.identifier,
                ItemStatus.REJECTED,
                code="idempotency_error",
                message=exc.user_message or str(exc),
            )
        except stripe.InvalidRequestError as exc:
            return self._item_error(item, exc)
        body = _exact(event)
        replayed = _header(event.last_response.headers, "Idempotent-Replayed") == "true"
        return ItemResult(
            item.identifier,
            ItemStatus.RECORDED,
            response={
                "api": "v1",
                "object": body.get("object", ""),
                "created": body.get("created"),
                "idempotent_replay": replayed,
            },
        )

    @staticmethod
    def _item_error(item: UsageItem, exc: stripe.InvalidRequestError) -> ItemResult:
        code = exc.code or ""
        message = exc.user_message or str(exc)
        if code in TOO_OLD_CODES:
            status = ItemStatus.TOO_OLD
        elif code in DUPLICATE_CODES or (not code and DUPLICATE_MESSAGE.search(message or "")):
            # Stripe already holds an event with this identifier (inside its window, from one
            # of our earlier attempts): it counted it.
            status = ItemStatus.DUPLICATE
            code = code or "identifier_already_exists"
        else:
            status = ItemStatus.REJECTED
        return ItemResult(
            item.identifier,
            status,
            code=code,
            message=message,
            response={"api": "v1", "http_status": exc.http_status},
        )

    def _session(self, *, renew: bool = False) -> str:
        if renew or not self._session_token or self._clock() >= self._session_expires:
            session = self._call(self.client.v2.billing.meter_event_session.create)
            expires = _parse_rfc3339(session.expires_at).timestamp()
            self._session_token = session.authentication_token
            self._session_expires = expires - SESSION_MARGIN.total_seconds()
        return self._session_token

    def _report_v2(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        events = [
            {
                "event_name": item.event_name,
                "identifier": item.identifier,
                "payload": {"stripe_customer_id": item.customer_id, "value": item.value_text},
                "timestamp": _rfc3339(item.timestamp),
            }
            for item in items
        ]
        # The same batch retried carries the same key; a batch is fixed by its identifiers.
        digest = hashlib.sha256("\n".join(i.idempotency_key for i in items).encode()).hexdigest()
        key = f"mo-batch-{digest[:48]}"
        try:
            for renewed in (False, True):
                try:
                    self._call(
                        self.client.v2.billing.meter_event_stream.create,
                        {"events": events},
                        {"api_key": self._session(renew=renewed), "idempotency_key": key},
                    )
                    break
                except (ProviderMisconfigured, stripe.TemporarySessionExpiredError):
                    # An expired or revoked session token: get a new session, once.
                    if renewed:
                        raise
        except _NoRetry as exc:
            return [
                ItemResult(
                    i.identifier,
                    ItemStatus.RETRY,
                    code="saved_server_error",
                    message=str(exc),
                    response={"api": "v2", "should_retry": False},
                    next_idempotency_key=next_idempotency_key(i.idempotency_key),
                )
                for i in items
            ]
        except _InFlight as exc:
            return [
                ItemResult(
                    i.identifier,
                    ItemStatus.RETRY,
                    code="idempotency_key_in_flight",
                    message=str(exc),
                    response={"api": "v2", "http_status": 409},
                )
                for i in items
            ]
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except stripe.TemporarySessionExpiredError as exc:
            # Expired again right after a renewal: try the next run.
            return [
                ItemResult(
                    i.identifier, ItemStatus.RETRY, code=SESSION_EXPIRED_CODE, message=str(exc)
                )
                for i in items
            ]
        except (stripe.InvalidRequestError, stripe.IdempotencyError):
            # Stripe refused the request as a whole: find out per item, synchronously.
            return [self._report_v1(item) for item in items]
        return [
            ItemResult(i.identifier, ItemStatus.ACCEPTED, response={"api": "v2", "batch": key})
            for i in items
        ]

    # --- reads ---------------------------------------------------------------------------------

    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """Per UTC day when both bounds are UTC midnights (`value_grouping_window=day`, which
        Stripe accepts only over day boundaries); otherwise one summary over exactly [start,
        end), without a grouping window, which Stripe accepts over minute boundaries (a period
        cut at a local midnight, e.g. 18:30 UTC for Asia/Kolkata). Bounds that are not whole
        minutes are refused here, before Stripe would."""
        start_ts, end_ts = int(start.timestamp()), int(end.timestamp())
        if start.timestamp() % 60 or end.timestamp() % 60:
            raise ProviderMisconfigured(
                f"Stripe summarises whole minutes only; {start.isoformat()} to "
                f"{end.isoformat()} is not minute-aligned."
            )
        params: dict = {
            "customer": customer_id,
            "start_time": start_ts,
            "end_time": end_ts,
            "limit": PAGE_SIZE,
        }
        if start_ts % DAY_SECONDS == 0 and end_ts % DAY_SECONDS == 0:
            params["value_grouping_window"] = "day"
        while True:
            page = _exact(
                self._call(
                    self.client.v1.billing.meters.event_summaries.list, provider_meter_id, params
                )
            )
            for summary in page.get("data", []):
                yield MeterSummary(
                    provider_meter_id=provider_meter_id,
                    customer_id=customer_id,
                    start=_ts(summary["start_time"]),
                    end=_ts(summary["end_time"]),
                    value=Decimal(summary["aggregated_value"]),
                )
            if not page.get("has_more") or not page.get("data"):
                return
            params["starting_after"] = page["data"][-1]["id"]

    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        params: dict = {"customer": customer_id, "limit": PAGE_SIZE}
        if created_since is not None:
            params["created"] = {"gte": int(created_since.timestamp())}
        while True:
            page = _exact(self._call(self.client.v1.invoices.list, params))
            for invoice in page.get("data", []):
                yield self._invoice(invoice)
            if not page.get("has_more") or not page.get("data"):
                return
            params["starting_after"] = page["data"][-1]["id"]

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        """Stripe's preview of the next invoice of the customer's first subscription that has
        one (`POST /v1/invoices/create_preview` with `customer` and `subscription`), or None:
        no customer id, no subscription that will invoice again, or Stripe answers
        `invoice_upcoming_none`. A line of a metered price names our meter (the price's
        `recurring.meter`, through the meter mapping)."""
        if not customer_id:
            return None
        for subscription in self._subscriptions(customer_id):
            try:
                preview = self._call(
                    self.client.v1.invoices.create_preview,
                    {"customer": customer_id, "subscription": subscription["id"]},
                )
            except stripe.InvalidRequestError as exc:
                if exc.code == UPCOMING_NONE_CODE:
                    continue
                raise ProviderError(f"Stripe: {exc.user_message or exc}") from exc
            invoice = self._invoice(_exact(preview))
            meters = _price_meters(subscription)
            codes = _meter_codes(self.name, set(meters.values()))
            return replace(
                invoice,
                lines=[
                    replace(line, meter_code=codes.get(meters.get(line.price_id, ""), ""))
                    for line in invoice.lines
                ],
            )
        return None

    def _subscriptions(self, customer_id: str) -> list[dict]:
        """The customer's subscriptions that may invoice again, oldest first (Stripe lists
        newest first and leaves canceled ones out unless asked)."""
        params: dict = {"customer": customer_id, "limit": PAGE_SIZE}
        found: list[dict] = []
        while True:
            try:
                page = _exact(self._call(self.client.v1.subscriptions.list, params))
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:  # no such customer: nothing upcoming
                    return []
                raise ProviderError(f"Stripe: {exc.user_message or exc}") from exc
            found.extend(page.get("data", []))
            if not page.get("has_more") or not page.get("data"):
                break
            params["starting_after"] = page["data"][-1]["id"]
        return [
            subscription
            for subscription in sorted(found, key=lambda s: (s.get("created") or 0, s["id"]))
            if subscription.get("status") not in ENDED_SUBSCRIPTION_STATUSES
        ]

    # --- credits -------------------------------------------------------------------------------

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """Open period: a customer balance transaction (a negative amount is a credit Stripe
        applies to the next invoice when it is finalized). A finalized invoice: a credit note
        (`amount`, our reason mapped to Stripe's four, ours in the metadata). The idempotency
        key comes with the request, so a retry, or a rerun after we crashed before storing
        the answer, gets Stripe's first answer back instead of a second credit."""
        if credit.amount_minor <= 0:
            raise ProviderError("A credit is a positive amount.")
        metadata = credit.provider_metadata()
        options = {"idempotency_key": credit.idempotency_key}
        try:
            if credit.invoice_id:
                note = self._call(
                    self.client.v1.credit_notes.create,
                    {
                        "invoice": credit.invoice_id,
                        "amount": credit.amount_minor,
                        "reason": CREDIT_NOTE_REASONS.get(credit.reason_code, "order_change"),
                        "memo": credit.description[:500],
                        "metadata": metadata,
                    },
                    options,
                )
                return CreditResult(
                    credit_id=note.id, route=CreditRoute.CREDIT_NOTE, response=_exact(note)
                )
            transaction = self._call(
                self.client.v1.customers.balance_transactions.create,
                credit.customer_id,
                {
                    "amount": -credit.amount_minor,
                    "currency": credit.currency.lower(),
                    "description": credit.description[:350],
                    "metadata": metadata,
                },
                options,
            )
        except stripe.StripeError as exc:
            # Refused (a 400: an invoice not finalized, an amount over what is left, the key
            # reused with other values): kept on the adjustment, which can be retried.
            raise ProviderError(f"Stripe: {exc.user_message or exc}") from exc
        return CreditResult(
            credit_id=transaction.id,
            route=CreditRoute.BALANCE_TRANSACTION,
            response=_exact(transaction),
        )

    def _invoice(self, invoice: dict) -> InvoiceData:
        embedded = invoice.get("lines") or {}
        lines = list(embedded.get("data", []))
        if embedded.get("has_more") and lines and invoice.get("id"):
            params: dict = {"limit": PAGE_SIZE, "starting_after": lines[-1]["id"]}
            while True:
                page = _exact(
                    self._call(self.client.v1.invoices.line_items.list, invoice["id"], params)
                )
                lines.extend(page.get("data", []))
                if not page.get("has_more") or not page.get("data"):
                    break
                params["starting_after"] = page["data"][-1]["id"]
        return InvoiceData(
            # A preview may come without an id (older versions) or with an `upcoming_` one.
            invoice_id=invoice.get("id") or f"upcoming-{invoice.get('customer') or ''}",
            customer_id=invoice.get("customer") or "",
            number=invoice.get("number") or "",
            status=invoice.get("status") or "",
            currency=(invoice.get("currency") or "").upper(),
            total_minor=int(invoice.get("total") or 0),
            period_start=_ts(invoice.get("period_start")),
            period_end=_ts(invoice.get("period_end")),
            created=_ts(invoice.get("created")),
            lines=[line_from_stripe(line) for line in lines],
            raw={k: v for k, v in invoice.items() if k != "lines"},
        )


def _price_meters(subscription: dict) -> dict[str, str]:
    """Price id -> Stripe meter id of the subscription's metered prices."""
    meters = {}
    for item in (subscription.get("items") or {}).get("data", []):
        price = item.get("price") or {}
        meter = (price.get("recurring") or {}).get("meter")
        if price.get("id") and meter:
            meters[price["id"]] = meter
    return meters


def _meter_codes(provider: str, meter_ids: set[str]) -> dict[str, str]:
    """Stripe meter id -> our meter's code, through the meter mapping (one query)."""
    if not meter_ids:
        return {}
    from billing.models import ProviderMeter

    return dict(
        ProviderMeter.objects.filter(
            provider=provider, provider_meter_id__in=meter_ids
        ).values_list("provider_meter_id", "meter__code")
    )


def line_from_stripe(line: dict) -> InvoiceLineData:
    """An invoice line item, exact: quantity_decimal when Stripe gives it, else quantity."""
    quantity = line.get("quantity_decimal")
    if quantity in (None, ""):
        quantity = line.get("quantity")
    pricing = line.get("pricing") or {}
    price_id = (pricing.get("price_details") or {}).get("price") or ""
    if not price_id and isinstance(line.get("price"), dict):
        price_id = line["price"].get("id", "")
    period = line.get("period") or {}
    return InvoiceLineData(
        line_id=line.get("id") or "",
        description=line.get("description") or "",
        quantity=None if quantity is None else Decimal(str(quantity)),
        amount_minor=int(line.get("amount") or 0),
        price_id=price_id,
        period_start=_ts(period.get("start")),
        period_end=_ts(period.get("end")),
        raw=line,
    )


# --- webhooks ----------------------------------------------------------------------------------


def webhook_verify(
    *, payload: bytes, signature: str, secret: str, tolerance: int = WEBHOOK_TOLERANCE_SECONDS
) -> dict:
    """Check a webhook's Stripe-Signature (HMAC-SHA256 of "<t>.<body>", timestamp within
    `tolerance` seconds) with the SDK's own verifier, and return the parsed event."""
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureError(str(exc.user_message or exc)) from exc
    try:
        event = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookSignatureError("The payload is not JSON.") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookSignatureError("The payload is not a Stripe event (no id or type).")
    return event
