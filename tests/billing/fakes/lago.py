"""A stateful fake of the parts of Lago Meterops talks to, served over real HTTP.

Written from Lago's API reference and the getlago/lago-api source; the adapter drives it
through the official `lago-python-client` SDK (LAGO_API_URL = the fake's root; the SDK adds
`/api/v1/`). It enforces what Lago documents:

- `Authorization: Bearer <api key>` on every request (401 otherwise);
- `POST /events`: one event; a `transaction_id` already held for the subscription answers 422
  `validation_errors` with `error_details: {transaction_id: ["value_already_exist"]}` (a
  unique index: kept for good);
- `POST /events/batch`: at most 100 events (more: 422 `too_many_events`), validated as a
  whole: any invalid event (a repeated transaction_id, in the batch or already held; a
  missing code, subscription or timestamp) answers 422 with `error_details` by event index
  and none of the batch is saved; otherwise 200 with the events;
- rate limit: the next few requests (`fail_next`) or every Nth (`rate_limit_every`) answer
  429 with `x-ratelimit-limit/remaining/reset` (seconds until the window resets);
- `POST /customers` creates or updates by `external_id`; billable metrics by code (a second
  with the same code: 422 `value_already_exist`), `sum_agg` / `max_agg` over `field_name`;
- subscriptions (made by tests with `subscribe`, external id = customer external id, with
  consecutive billing periods): `GET /customers/{id}/current_usage?external_subscription_id=`
  the period holding now, `GET /customers/{id}/past_usage` the closed ones (newest first,
  page-numbered, `billable_metric_code` filters charges): per billing period only;
- invoices (made by tests with `create_invoice`), `GET /invoices?external_customer_id=`,
  newest first, page-numbered;
- wallets: `POST /wallets` (the customer must exist, 404 otherwise; `code` unique per
  customer: 422 `value_already_exist`; at most 5 active wallets; the currency must be the
  customer's once it has one: 422 `currencies_does_not_match`), `GET
  /wallets?external_customer_id=` (page-numbered); `POST /wallet_transactions` with
  `granted_credits` (settled at once, inbound, `source: manual`) and `paid_credits`
  (pending until paid), each answered in a list, with their `metadata` (key/value pairs);
  `GET /wallets/{id}/wallet_transactions` (newest first, filter `transaction_type`). Lago
  has no idempotency key: the same request twice grants twice. `create_invoice` deducts
  active wallets' balances (priority order) from the total after tax, as Lago does;
- `lose_next(path, count)`: the next requests to a path are carried out and their answer is
  lost (a 502, as from a gateway that timed out), for retry tests.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from http.server import ThreadingHTTPServer
from urllib.parse import unquote

from tests.billing.fake_stripe import Answer, _Handler, plain

DAY = 86_400
BATCH_MAX = 100


@dataclass
class LagoEvent:
    transaction_id: str
    subscription: str
    code: str
    timestamp: float
    properties: dict
    received: float

    def value(self, field: str) -> Decimal:
        return Decimal(str(self.properties.get(field, 0)))


class LagoError(Exception):
    def __init__(self, status: int, error: str, code: str, details: dict | None = None):
        super().__init__(code)
        body = {"status": status, "error": error, "code": code}
        if details is not None:
            body["error_details"] = details
        self.answer = Answer(status, body)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts(value) -> float:
    if isinstance(value, int | float | Decimal):
        return float(value)
    text = str(value)
    try:
        return float(text)
    except ValueError:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


class FakeLago:
    def __init__(self, *, api_key: str = "lago_test_fake", rate_limit_every: int = 0) -> None:
        self.api_key = api_key
        self.rate_limit_every = rate_limit_every
        self.rate_limit_reset = "0"
        self.lock = threading.RLock()
        self.customers: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}
        self.events: list[LagoEvent] = []
        self.keys: dict[tuple[str, str], LagoEvent] = {}
        self.subscriptions: dict[str, dict] = {}
        self.invoices: list[dict] = []
        self.wallets: dict[str, dict] = {}
        self.wallet_transactions: list[dict] = []
        self.requests: list[dict] = []
        self.request_count = 0
        self.forced: deque[int] = deque()
        self.lost: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

            def do_PUT(self):
                self._serve("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- test controls -----------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429) -> None:
        with self.lock:
            self.forced.extend([status] * count)

    def lose_next(self, path: str, count: int = 1) -> None:
        """Carry out the next `count` requests to `path` and lose their answers (502)."""
        with self.lock:
            self.lost[path] = self.lost.get(path, 0) + count

    def granted(self, external_customer_id: str) -> list[dict]:
        """The granted (inbound) wallet transactions of a customer, oldest first."""
        wallets = {
            w["lago_id"]
            for w in self.wallets.values()
            if w["external_customer_id"] == external_customer_id
        }
        return [
            t
            for t in self.wallet_transactions
            if t["lago_wallet_id"] in wallets and t["transaction_type"] == "inbound"
        ]

    def calls(self, path_prefix: str = "", method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method)
        ]

    def counted(self, *, code: str | None = None, subscription: str | None = None):
        return [
            e
            for e in self.events
            if (code is None or e.code == code)
            and (subscription is None or e.subscription == subscription)
        ]

    def total(self, *, code: str, subscription: str) -> Decimal:
        field = self.metrics[code]["field_name"] if code in self.metrics else "value"
        return sum(
            (e.value(field) for e in self.counted(code=code, subscription=subscription)),
            Decimal(0),
        )

    def count_key(self, transaction_id: str) -> int:
        return sum(1 for e in self.events if e.transaction_id == transaction_id)

    def subscribe(
        self,
        external_id: str,
        *,
        periods: list[tuple[float, float]] | None = None,
        unit_prices: dict | None = None,
    ) -> dict:
        """An active subscription (external id = the customer's) over consecutive billing
        periods (default: monthly-ish, 30 days, the current one started 10 days ago)."""
        with self.lock:
            if periods is None:
                now = time.time()
                start = now - (now % DAY) - 10 * DAY
                periods = [(start - 30 * DAY * k, start - 30 * DAY * (k - 1)) for k in (2, 1, 0)]
            subscription = {
                "lago_id": f"sub_{secrets.token_hex(6)}",
                "external_id": external_id,
                "external_customer_id": external_id,
                "status": "active",
                "periods": sorted(periods),
                "unit_prices": dict(unit_prices or {}),
            }
            self.subscriptions[external_id] = subscription
            return subscription

    def create_invoice(
        self,
        *,
        external_customer_id: str,
        lines: list[tuple[str, Decimal, int]],
        currency: str = "EUR",
        status: str = "finalized",
    ) -> dict:
        """A finalized invoice: fees of (metric code, units, amount in cents)."""
        with self.lock:
            now = time.time() + len(self.invoices)
            fees = [
                {
                    "lago_id": f"fee_{secrets.token_hex(6)}",
                    "lago_charge_id": f"ch_{code}",
                    "amount_cents": amount,
                    "amount_currency": currency,
                    "units": plain(units),
                    "events_count": 1,
                    "from_date": _iso(now - 30 * DAY),
                    "to_date": _iso(now),
                    "item": {
                        "type": "charge",
                        "code": code,
                        "name": self.metrics.get(code, {}).get("name", code),
                    },
                }
                for code, units, amount in lines
            ]
            total = sum(f["amount_cents"] for f in fees)
            prepaid = self._consume_wallets(external_customer_id, currency, total)
            invoice = {
                "lago_id": f"inv_{secrets.token_hex(6)}",
                "number": f"LAG-{len(self.invoices) + 1:04d}",
                "issuing_date": _iso(now)[:10],
                "payment_overdue": False,
                "net_payment_term": 0,
                "invoice_type": "subscription",
                "version_number": 4,
                "status": status,
                "payment_status": "pending",
                "currency": currency,
                "fees_amount_cents": total,
                "coupons_amount_cents": 0,
                "taxes_amount_cents": 0,
                "credit_notes_amount_cents": 0,
                "progressive_billing_credit_amount_cents": 0,
                "sub_total_excluding_taxes_amount_cents": total,
                "sub_total_including_taxes_amount_cents": total,
                "total_amount_cents": total - prepaid,
                "total_due_amount_cents": total - prepaid,
                "prepaid_credit_amount_cents": prepaid,
                "external_customer_id": external_customer_id,
                "fees": fees,
            }
            self.invoices.append(invoice)
            return invoice

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> Answer:
        with self.lock:
            self.request_count += 1
            record = {"method": method, "path": path, "query": query, "body": raw}
            self.requests.append(record)
            if self.forced or (
                self.rate_limit_every and self.request_count % self.rate_limit_every == 0
            ):
                status = self.forced.popleft() if self.forced else 429
                record["status"] = status
                answer = LagoError(
                    status,
                    "Too Many Requests" if status == 429 else "Internal Server Error",
                    "too_many_requests" if status == 429 else "internal_error",
                ).answer
                if status == 429:
                    answer.headers.update(
                        {
                            "x-ratelimit-limit": "500",
                            "x-ratelimit-remaining": "0",
                            "x-ratelimit-reset": self.rate_limit_reset,
                        }
                    )
                return answer
            try:
                if headers.get("Authorization") != f"Bearer {self.api_key}":
                    raise LagoError(401, "Unauthorized", "unauthorized")
                answer = self._route(method, path, query, raw)
            except LagoError as exc:
                answer = exc.answer
            if self.lost.get(path):
                self.lost[path] -= 1
                record["done"] = answer.status
                answer = LagoError(502, "Bad Gateway", "bad_gateway").answer
            record["status"] = answer.status
            return answer

    def _route(self, method, path, query, raw) -> Answer:
        if not path.startswith("/api/v1/"):
            raise LagoError(404, "Not Found", "route_not_found")
        parts = [unquote(p) for p in path[len("/api/v1/") :].strip("/").split("/")]
        body = json.loads(raw, parse_float=Decimal) if raw else {}
        match method, parts:
            case "POST", ["events"]:
                event = self._validate([body.get("event") or {}], single=True)
                return Answer(200, {"event": self._public_event(event[0])})
            case "POST", ["events", "batch"]:
                events = body.get("events") or []
                if len(events) > BATCH_MAX:
                    raise LagoError(422, "Unprocessable Entity", "too_many_events")
                saved = self._validate(events)
                return Answer(200, {"events": [self._public_event(e) for e in saved]})
            case "POST", ["customers"]:
                return self._upsert_customer(body.get("customer") or {})
            case "GET", ["billable_metrics", code]:
                if code not in self.metrics:
                    raise LagoError(404, "Not Found", "billable_metric_not_found")
                return Answer(200, {"billable_metric": self.metrics[code]})
            case "POST", ["billable_metrics"]:
                return self._create_metric(body.get("billable_metric") or {})
            case "GET", ["customers", customer, "current_usage"]:
                return self._current_usage(customer, query)
            case "GET", ["customers", customer, "past_usage"]:
                return self._past_usage(customer, query)
            case "GET", ["invoices"]:
                return self._invoices(query)
            case "POST", ["wallets"]:
                return self._create_wallet(body.get("wallet") or {})
            case "GET", ["wallets"]:
                return self._list_wallets(query)
            case "POST", ["wallet_transactions"]:
                return self._create_wallet_transactions(body.get("wallet_transaction") or {})
            case "GET", ["wallets", wallet_id, "wallet_transactions"]:
                return self._list_wallet_transactions(wallet_id, query)
        raise LagoError(404, "Not Found", "route_not_found")

    # --- events ------------------------------------------------------------------------------

    def _validate(self, events: list[dict], *, single: bool = False) -> list[LagoEvent]:
        """All or nothing: every event is checked; any error and nothing is saved."""
        details: dict[str, dict] = {}
        seen: set[tuple[str, str]] = set()
        for n, event in enumerate(events):
            errors: dict[str, list[str]] = {}
            sub = event.get("external_subscription_id")
            txn = event.get("transaction_id")
            if not txn:
                errors["transaction_id"] = ["value_is_mandatory"]
            if not sub:
                errors["external_subscription_id"] = ["value_is_mandatory"]
            if not event.get("code"):
                errors["code"] = ["value_is_mandatory"]
            if txn and sub and ((sub, txn) in self.keys or (sub, txn) in seen):
                errors["transaction_id"] = ["value_already_exist"]
            if event.get("timestamp") is not None:
                try:
                    _ts(event["timestamp"])
                except ValueError:
                    errors["timestamp"] = ["invalid_format"]
            seen.add((sub, txn))
            if errors:
                details[str(n)] = errors
        if details:
            if single:  # POST /events: the one event's errors, not by index
                raise LagoError(422, "Unprocessable Entity", "validation_errors", details["0"])
            raise LagoError(422, "Unprocessable Entity", "validation_errors", details)
        now = time.time()
        saved = []
        for event in events:
            item = LagoEvent(
                transaction_id=event["transaction_id"],
                subscription=event["external_subscription_id"],
                code=event["code"],
                timestamp=_ts(event["timestamp"]) if event.get("timestamp") is not None else now,
                properties=event.get("properties") or {},
                received=now,
            )
            self.events.append(item)
            self.keys[(item.subscription, item.transaction_id)] = item
            saved.append(item)
        return saved

    @staticmethod
    def _public_event(event: LagoEvent) -> dict:
        return {
            "lago_id": f"ev_{secrets.token_hex(6)}",
            "transaction_id": event.transaction_id,
            "external_subscription_id": event.subscription,
            "code": event.code,
            "timestamp": _iso(event.timestamp),
            "properties": event.properties,
            "created_at": _iso(event.received),
        }

    # --- customers and metrics -----------------------------------------------------------------

    def _upsert_customer(self, body: dict) -> Answer:
        external = body.get("external_id")
        if not external:
            raise LagoError(
                422, "Unprocessable Entity", "validation_errors", {"external_id": ["blank"]}
            )
        customer = self.customers.get(external) or {
            "lago_id": f"cus_{secrets.token_hex(6)}",
            "external_id": external,
            "created_at": _iso(time.time()),
        }
        customer.update(
            name=body.get("name") or customer.get("name"),
            timezone=body.get("timezone") or customer.get("timezone"),
            applicable_timezone=body.get("timezone") or customer.get("timezone") or "UTC",
            updated_at=_iso(time.time()),
        )
        self.customers[external] = customer
        return Answer(200, {"customer": customer})

    def _create_metric(self, body: dict) -> Answer:
        code = body.get("code")
        if not code:
            raise LagoError(422, "Unprocessable Entity", "validation_errors", {"code": ["blank"]})
        if code in self.metrics:
            raise LagoError(
                422, "Unprocessable Entity", "validation_errors", {"code": ["value_already_exist"]}
            )
        if body.get("aggregation_type") not in ("sum_agg", "max_agg", "count_agg", "latest_agg"):
            raise LagoError(
                422, "Unprocessable Entity", "validation_errors", {"aggregation_type": ["invalid"]}
            )
        metric = {
            "lago_id": f"bm_{secrets.token_hex(6)}",
            "name": body.get("name") or code,
            "code": code,
            "description": body.get("description"),
            "aggregation_type": body["aggregation_type"],
            "field_name": body.get("field_name") or "value",
            "recurring": bool(body.get("recurring")),
            "created_at": _iso(time.time()),
            "filters": [],
        }
        self.metrics[code] = metric
        return Answer(200, {"billable_metric": metric})

    # --- usage per billing period ---------------------------------------------------------------

    def _subscription(self, customer: str, query: dict) -> dict:
        if customer not in self.customers:
            raise LagoError(404, "Not Found", "customer_not_found")
        sub = self.subscriptions.get(query.get("external_subscription_id", ""))
        if sub is None or sub["external_customer_id"] != customer:
            raise LagoError(404, "Not Found", "subscription_not_found")
        return sub

    def _period_usage(self, sub: dict, start: float, end: float, code: str | None) -> dict:
        charges = []
        total = 0
        for metric in self.metrics.values():
            if code and metric["code"] != code:
                continue
            rows = [
                e
                for e in self.counted(code=metric["code"], subscription=sub["external_id"])
                if start <= e.timestamp < end
            ]
            values = [e.value(metric["field_name"]) for e in rows]
            if metric["aggregation_type"] == "max_agg":
                units = max(values, default=Decimal(0))
            elif metric["aggregation_type"] == "count_agg":
                units = Decimal(len(values))
            else:
                units = sum(values, Decimal(0))
            price = Decimal(str(sub["unit_prices"].get(metric["code"], 0)))
            amount = int((units * price * 100).to_integral_value())
            total += amount
            charges.append(
                {
                    "units": plain(units),
                    "total_aggregated_units": plain(units),
                    "events_count": len(rows),
                    "amount_cents": amount,
                    "amount_currency": "EUR",
                    "charge": {"lago_id": f"ch_{metric['code']}", "charge_model": "standard"},
                    "billable_metric": {
                        "lago_id": metric["lago_id"],
                        "name": metric["name"],
                        "code": metric["code"],
                        "aggregation_type": metric["aggregation_type"],
                    },
                    "filters": [],
                    "grouped_usage": [],
                }
            )
        return {
            "from_datetime": _iso(start),
            "to_datetime": _iso(end),
            "issuing_date": _iso(end)[:10],
            "currency": "EUR",
            "amount_cents": total,
            "total_amount_cents": total,
            "taxes_amount_cents": 0,
            "charges_usage": charges,
        }

    def _current_usage(self, customer: str, query: dict) -> Answer:
        sub = self._subscription(customer, query)
        now = time.time()
        for start, end in sub["periods"]:
            if start <= now < end:
                usage = self._period_usage(sub, start, end, None)
                return Answer(200, {"customer_usage": usage})
        raise LagoError(405, "Method Not Allowed", "no_active_subscription")

    def _past_usage(self, customer: str, query: dict) -> Answer:
        sub = self._subscription(customer, query)
        now = time.time()
        closed = [p for p in sub["periods"] if p[1] <= now][::-1]
        page = int(query.get("page") or 1)
        per_page = int(query.get("per_page") or 20)
        chunk = closed[(page - 1) * per_page : page * per_page]
        pages = max(1, -(-len(closed) // per_page))
        periods = [
            self._period_usage(sub, s, e, query.get("billable_metric_code")) for s, e in chunk
        ]
        return Answer(200, {"usage_periods": periods, "meta": self._meta(page, pages, closed)})

    @staticmethod
    def _meta(page: int, pages: int, rows: list) -> dict:
        return {
            "current_page": page,
            "next_page": page + 1 if page < pages else None,
            "prev_page": page - 1 if page > 1 else None,
            "total_pages": pages,
            "total_count": len(rows),
        }

    def _invoices(self, query: dict) -> Answer:
        rows = [
            i
            for i in reversed(self.invoices)
            if not query.get("external_customer_id")
            or i["external_customer_id"] == query["external_customer_id"]
        ]
        page = int(query.get("page") or 1)
        per_page = int(query.get("per_page") or 20)
        pages = max(1, -(-len(rows) // per_page))
        chunk = [
            {k: v for k, v in i.items() if k != "external_customer_id"}
            for i in rows[(page - 1) * per_page : page * per_page]
        ]
        return Answer(200, {"invoices": chunk, "meta": self._meta(page, pages, rows)})

    # --- wallets and prepaid credits ------------------------------------------------------------

    @staticmethod
    def _invalid(field: str, code: str) -> LagoError:
        return LagoError(422, "Unprocessable Entity", "validation_errors", {field: [code]})

    @staticmethod
    def _credits(value, field: str) -> Decimal:
        try:
            credits = Decimal(str(value if value not in (None, "") else 0))
        except ArithmeticError:
            raise FakeLago._invalid(field, "invalid_value") from None
        if credits < 0 or credits != credits.quantize(Decimal("0.00001")):
            raise FakeLago._invalid(field, "invalid_value")
        return credits

    def _create_wallet(self, body: dict) -> Answer:
        external = body.get("external_customer_id")
        customer = self.customers.get(external or "")
        if customer is None:
            raise LagoError(404, "Not Found", "customer_not_found")
        try:
            rate = Decimal(str(body.get("rate_amount")))
        except ArithmeticError:
            raise self._invalid("rate_amount", "invalid_value") from None
        if rate <= 0:
            raise self._invalid("rate_amount", "invalid_value")
        currency = body.get("currency")
        if not currency:
            raise self._invalid("currency", "value_is_mandatory")
        if customer.get("currency") and customer["currency"] != currency:
            raise self._invalid("currency", "currencies_does_not_match")
        mine = [w for w in self.wallets.values() if w["external_customer_id"] == external]
        code = body.get("code") or f"wallet_{len(mine) + 1}"
        if any(w["code"] == code for w in mine):
            raise self._invalid("code", "value_already_exist")
        if sum(1 for w in mine if w["status"] == "active") >= 5:
            raise self._invalid("customer", "wallet_limit_reached")
        customer["currency"] = currency
        now = _iso(time.time())
        wallet = {
            "lago_id": f"wal_{secrets.token_hex(6)}",
            "lago_customer_id": customer["lago_id"],
            "external_customer_id": external,
            "status": "active",
            "currency": currency,
            "name": body.get("name"),
            "code": code,
            "priority": int(body.get("priority") or 50),
            "rate_amount": plain(rate),
            "credits_balance": "0.0",
            "balance_cents": 0,
            "consumed_credits": "0.0",
            "created_at": now,
            "expiration_at": body.get("expiration_at"),
            "last_balance_sync_at": None,
            "last_consumed_credit_at": None,
            "terminated_at": None,
            "ongoing_balance_cents": 0,
            "ongoing_usage_balance_cents": 0,
            "credits_ongoing_balance": "0.0",
            "credits_ongoing_usage_balance": "0.0",
        }
        self.wallets[wallet["lago_id"]] = wallet
        self._transactions(
            wallet,
            paid=self._credits(body.get("paid_credits"), "paid_credits"),
            granted=self._credits(body.get("granted_credits"), "granted_credits"),
            metadata=body.get("transaction_metadata") or [],
            name=body.get("transaction_name"),
        )
        return Answer(200, {"wallet": wallet})

    def _list_wallets(self, query: dict) -> Answer:
        external = query.get("external_customer_id")
        if external not in self.customers:
            raise LagoError(404, "Not Found", "customer_not_found")
        rows = [w for w in self.wallets.values() if w["external_customer_id"] == external]
        return Answer(200, self._page("wallets", rows, query))

    def _create_wallet_transactions(self, body: dict) -> Answer:
        wallet = self.wallets.get(body.get("wallet_id") or "")
        if wallet is None:
            raise LagoError(404, "Not Found", "wallet_not_found")
        if wallet["status"] != "active":
            raise self._invalid("wallet_id", "wallet_is_terminated")
        paid = self._credits(body.get("paid_credits"), "paid_credits")
        granted = self._credits(body.get("granted_credits"), "granted_credits")
        made = self._transactions(
            wallet,
            paid=paid,
            granted=granted,
            metadata=body.get("metadata") or [],
            name=body.get("name"),
        )
        return Answer(200, {"wallet_transactions": made})

    def _transactions(
        self, wallet: dict, *, paid: Decimal, granted: Decimal, metadata: list, name
    ) -> list[dict]:
        for pair in metadata:
            if not isinstance(pair, dict) or set(pair) != {"key", "value"}:
                raise self._invalid("metadata", "invalid_key_value_pair")
        made = []
        for kind, credits in (("purchased", paid), ("granted", granted)):
            if not credits:
                continue
            settled = kind == "granted"  # paid credits wait for their invoice's payment
            amount = credits * Decimal(wallet["rate_amount"])
            now = _iso(time.time())
            row = {
                "lago_id": f"wtr_{secrets.token_hex(6)}",
                "lago_wallet_id": wallet["lago_id"],
                "lago_invoice_id": None,
                "lago_credit_note_id": None,
                "lago_voided_invoice_id": None,
                "status": "settled" if settled else "pending",
                "source": "manual",
                "transaction_status": kind,
                "transaction_type": "inbound",
                "amount": plain(amount),
                "credit_amount": plain(credits),
                "remaining_amount_cents": None,
                "remaining_credit_amount": None,
                "priority": wallet["priority"],
                "settled_at": now if settled else None,
                "failed_at": None,
                "created_at": now,
                "metadata": [dict(pair) for pair in metadata],
                "name": name,
                "invoice_requires_successful_payment": False,
                "purchase_order_number": None,
                "payment_method": None,
                "applied_invoice_custom_sections": None,
            }
            if settled:
                self._add_balance(wallet, credits)
            self.wallet_transactions.append(row)
            made.append(row)
        return made

    @staticmethod
    def _add_balance(wallet: dict, credits: Decimal) -> None:
        balance = Decimal(wallet["credits_balance"]) + credits
        cents = int((balance * Decimal(wallet["rate_amount"]) * 100).to_integral_value())
        wallet.update(
            credits_balance=plain(balance),
            balance_cents=cents,
            credits_ongoing_balance=plain(balance),
            ongoing_balance_cents=cents,
        )

    def _list_wallet_transactions(self, wallet_id: str, query: dict) -> Answer:
        if wallet_id not in self.wallets:
            raise LagoError(404, "Not Found", "wallet_not_found")
        rows = [
            t
            for t in reversed(self.wallet_transactions)
            if t["lago_wallet_id"] == wallet_id
            and query.get("transaction_type") in (None, t["transaction_type"])
            and query.get("status") in (None, t["status"])
        ]
        return Answer(200, self._page("wallet_transactions", rows, query))

    def _page(self, key: str, rows: list, query: dict) -> dict:
        page = int(query.get("page") or 1)
        per_page = int(query.get("per_page") or 20)
        pages = max(1, -(-len(rows) // per_page))
        chunk = rows[(page - 1) * per_page : page * per_page]
        return {key: chunk, "meta": self._meta(page, pages, rows)}

    def _consume_wallets(self, external_customer_id: str, currency: str, total: int) -> int:
        """Prepaid credits deducted from an invoice's total (after tax), active wallets in
        priority order, each recorded as a settled outbound transaction."""
        used = 0
        wallets = sorted(
            (
                w
                for w in self.wallets.values()
                if w["external_customer_id"] == external_customer_id
                and w["status"] == "active"
                and w["currency"] == currency
            ),
            key=lambda w: (w["priority"], w["created_at"]),
        )
        for wallet in wallets:
            take = min(wallet["balance_cents"], total - used)
            if take <= 0:
                continue
            credits = Decimal(take) / 100 / Decimal(wallet["rate_amount"])
            self._add_balance(wallet, -credits)
            wallet["consumed_credits"] = plain(Decimal(wallet["consumed_credits"]) + credits)
            now = _iso(time.time())
            self.wallet_transactions.append(
                {
                    "lago_id": f"wtr_{secrets.token_hex(6)}",
                    "lago_wallet_id": wallet["lago_id"],
                    "status": "settled",
                    "source": "manual",
                    "transaction_status": "invoiced",
                    "transaction_type": "outbound",
                    "amount": plain(Decimal(take) / 100),
                    "credit_amount": plain(credits),
                    "settled_at": now,
                    "created_at": now,
                    "metadata": [],
                    "name": None,
                }
            )
            used += take
        return used
