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
  than 5 minutes ahead are validation errors. Older usage goes through a backfill ("adding
  ... past events, even those that are older than the ingestion grace period"), per customer:
  `POST /events/backfills` {external_customer_id, timeframe_start, timeframe_end (at most 31
  days apart by default, and no later than the grace boundary), replace_existing_events
  false: added to the existing events}, then `POST /ingest?backfill_id=` with the usual
  idempotency keys (Orb ingests a key at most once, backfill or not: a resend is a
  duplicate), then `POST /events/backfills/{id}/close`; Orb reflects the backfill
  asynchronously (status pending -> reflected), so the entries are `sent`, not acknowledged.
  A backfill left open by a killed run is found again (pending, not closed, covering the
  timeframe) and reused, else Orb closes it itself at its close_time (a day after creation);
  one overlapping a pending backfill is refused by Orb: those entries are sent again later.
  Usage older than the backfill window (ORB_RULES.backfill_window, the documented 31-day
  span) is recorded too_old by the ledger before sending it. Orb leaves issued invoices as
  they are: a backfill into a period already invoiced at Orb changes its usage, not that
  invoice.
- `?debug=true` adds `debug: {duplicate: [...], ingested: [...]}`: a key Orb already had is
  answered DUPLICATE (counted), a new one RECORDED.
- Orb publishes no hard rate limit; a 429 (and 5xx, network errors) is retried with backoff,
  honouring Retry-After up to `retry_after_cap` (ORB_RETRY_AFTER_MAX); a longer wait halts the
  run. The SDK's own retries are off so that this is the one retry policy.
- Customers are matched by external id (`GET /customers/external_customer_id/{id}`) or
  created with it (and timezone UTC, so Orb's "customer local midnight" days are UTC days);
  events name the customer by `external_customer_id`, so nothing is stored on our account.
- Meters are billable metrics (`POST /metrics`, SQL over events, on an item): sum meters
  `SELECT SUM(value) ...`, period-to-date ("last") meters `SELECT LATEST_BY(value,
  timestamp) ...` (Orb's documented function: "the latest value of value_property ordered by
  time_based_property"), so a gauge that falls is billed at its last value, not its highest.
  A metric made before with MAX(value) is matched by its metadata and kept as it is.
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
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
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
# "By default, Orb allows backfills up to 31 days in duration at a time": the oldest usage the
# adapter backfills, so that one backfill per customer spans a run's late usage.
BACKFILL_WINDOW = timedelta(days=31)
# Usage this close to the grace boundary goes live (a backfill may not reach past it): should
# it cross the boundary on the way, Orb's refusal sends it by a backfill on a later run.
BACKFILL_MARGIN = timedelta(seconds=60)

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
    backfill_window=BACKFILL_WINDOW,
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
    aggregate = "LATEST_BY(value, timestamp)" if spec.aggregation == "last" else "SUM(value)"
    return f"SELECT {aggregate} FROM events WHERE event_name = '{spec.event_name}'"


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
        self.rules = replace(ORB_RULES, past_window=grace_period)
        self._init_retry(
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            sleep=sleep,
        )
        self.batch_size = batch_size
        self._customers: set[str] = set()
        self._orb_ids: dict[str, str] = {}
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
        """Live usage in ingest requests; usage past the grace period (or refused by Orb as
        past it) through a backfill per customer."""
        if self.read_only:
            raise ProviderMisconfigured("Orb is the read-only secondary platform here.")
        results: dict[str, ItemResult] = {}
        boundary = self._grace_boundary()
        live = [i for i in items if i.timestamp >= boundary - BACKFILL_MARGIN]
        late = [i for i in items if i.timestamp < boundary - BACKFILL_MARGIN]
        for start in range(0, len(live), self.batch_size):
            for result in self._ingest(list(live[start : start + self.batch_size])):
                results[result.identifier] = result
        by_identifier = {i.identifier: i for i in items}
        # What Orb refused as past its grace period (its clock, its account's setting) goes by
        # a backfill as well.
        late += [
            by_identifier[identifier]
            for identifier, result in results.items()
            if result.code == "outside_grace_period"
        ]
        for result in self._backfill(late):
            results[result.identifier] = result
        return [results[i.identifier] for i in items]

    def _grace_boundary(self) -> datetime:
        return datetime.now(UTC) - self.rules.past_window

    def _ingest(self, items: list[UsageItem], backfill: dict | None = None) -> list[ItemResult]:
        if self.halted:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in items]
        options: dict = {}
        if backfill is not None:
            options["backfill_id"] = backfill["id"]
        try:
            raw = self._call(
                self.client.events.with_raw_response.ingest,
                events=[self._event(i) for i in items],
                extra_query={"debug": "true"},
                **options,
            )
        except ProviderUnavailable as exc:
            return [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in items]
        except orb.BadRequestError as exc:
            return self._validation_failed(items, exc, backfill)
        body = sdk_body(raw)
        duplicates = set((body.get("debug") or {}).get("duplicate") or [])
        if backfill is None:
            counted, response = ItemStatus.RECORDED, {"api": "ingest"}
        else:
            # Reflected by Orb after the close, asynchronously: sent, not yet acknowledged.
            counted = ItemStatus.ACCEPTED
            response = {"api": "ingest", "backfill_id": backfill["id"]}
        return [
            ItemResult(
                i.identifier,
                ItemStatus.DUPLICATE
                if i.identifier in duplicates and backfill is None
                else counted,
                code="duplicate_idempotency_key" if i.identifier in duplicates else "",
                response=response,
            )
            for i in items
        ]

    def _validation_failed(
        self, items: list[UsageItem], exc: orb.BadRequestError, backfill: dict | None = None
    ) -> list:
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
        return out + (self._ingest(rest, backfill) if rest else [])

    # --- backfills (usage past the grace period) ------------------------------------------------

    def _backfill(self, items: list[UsageItem]) -> list[ItemResult]:
        """Per customer: a backfill over the usage's timeframe (added to the existing events),
        the usage ingested into it with its own keys, the backfill closed."""
        out: list[ItemResult] = []
        window = self.rules.backfill_window or BACKFILL_WINDOW
        oldest = datetime.now(UTC) - window
        by_customer: dict[str, list[UsageItem]] = defaultdict(list)
        for item in items:
            if item.timestamp < oldest:
                out.append(
                    ItemResult(
                        item.identifier,
                        ItemStatus.TOO_OLD,
                        code="outside_backfill_window",
                        message="Older than the usage Orb takes by a backfill "
                        f"({window.days} days); not sent.",
                        response={"not_sent": True},
                    )
                )
            else:
                by_customer[item.customer_id].append(item)
        for customer, group in by_customer.items():
            group.sort(key=lambda i: i.timestamp)
            start = group[0].timestamp.replace(microsecond=0)
            end = group[-1].timestamp.replace(microsecond=0) + timedelta(seconds=1)
            if self.halted:
                out += [
                    ItemResult(i.identifier, ItemStatus.RETRY, message=self.halted) for i in group
                ]
                continue
            try:
                backfill, refused = self._open_backfill(customer, start, end)
            except ProviderUnavailable as exc:
                out += [ItemResult(i.identifier, ItemStatus.RETRY, message=str(exc)) for i in group]
                continue
            if backfill is None and "grace period boundary" in refused:
                # Orb's grace period is longer than ORB_GRACE_PERIOD_HOURS says: the usage is
                # still inside it, so Orb takes it live (and its key counts it once).
                for n in range(0, len(group), self.batch_size):
                    out += self._ingest(group[n : n + self.batch_size])
                continue
            if backfill is None:
                out += [
                    ItemResult(
                        i.identifier,
                        ItemStatus.RETRY,
                        code="backfill_refused",
                        message=f"Orb refused the backfill: {refused} (sent again later)"[:500],
                    )
                    for i in group
                ]
                continue
            results: list[ItemResult] = []
            for n in range(0, len(group), self.batch_size):
                results += self._ingest(group[n : n + self.batch_size], backfill)
            closed = self._close_backfill(backfill)
            out += [
                replace(r, response={**r.response, "backfill_closed": closed})
                if r.response.get("backfill_id")
                else r
                for r in results
            ]
        return out

    def _orb_customer_id(self, external_id: str) -> str:
        if external_id not in self._orb_ids:
            customer = sdk_body(
                self._call(
                    self.client.customers.with_raw_response.fetch_by_external_id, external_id
                )
            )
            self._orb_ids[external_id] = customer["id"]
        return self._orb_ids[external_id]

    def _pending_backfills(self, orb_customer_id: str) -> Iterator[dict]:
        cursor = None
        while True:
            params: dict = {"customer_id": orb_customer_id, "status": "pending", "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = sdk_body(
                self._call(self.client.events.backfills.with_raw_response.list, **params)
            )
            yield from page.get("data", [])
            cursor = (page.get("pagination_metadata") or {}).get("next_cursor")
            if not cursor:
                return

    def _open_backfill(
        self, customer: str, start: datetime, end: datetime
    ) -> tuple[dict | None, str]:
        """An open backfill of the customer covering [start, end): one left open by an earlier
        (killed) run, else a new one. (None, Orb's reason) when Orb refuses to make one."""
        now = datetime.now(UTC)
        try:
            orb_id = self._orb_customer_id(customer)
        except orb.NotFoundError:
            return None, f"no customer {customer} at Orb"
        for backfill in self._pending_backfills(orb_id):
            close_time = parse_time(backfill.get("close_time"))
            if (
                not backfill.get("replace_existing_events")
                and (close_time is None or close_time > now)
                and parse_time(backfill["timeframe_start"]) <= start
                and end <= parse_time(backfill["timeframe_end"])
            ):
                return backfill, ""
        # No idempotency key: Orb would replay a backfill that a killed run has closed since
        # (ingesting into it is refused); an open one is found above, a closed one still
        # reflecting makes Orb refuse an overlapping backfill, and the usage goes next run.
        try:
            backfill = sdk_body(
                self._call(
                    self.client.events.backfills.with_raw_response.create,
                    external_customer_id=customer,
                    timeframe_start=iso_utc(start),
                    timeframe_end=iso_utc(end),
                    replace_existing_events=False,
                )
            )
        except (orb.BadRequestError, orb.ConflictError, orb.NotFoundError) as exc:
            body = _error_body(exc)
            return None, str(body.get("title") or exc)
        return backfill, ""

    def _close_backfill(self, backfill: dict) -> bool:
        """Close it so that Orb reflects it; False when Orb could not be told now (it then
        closes the backfill itself at its close_time, a day after creation)."""
        try:
            self._call(
                self.client.events.backfills.with_raw_response.close,
                backfill["id"],
                idempotency_key=f"mo-close-{backfill['id']}"[:64],
            )
        except (ProviderUnavailable, orb.APIStatusError):
            return False
        return True

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
