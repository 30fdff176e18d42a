"""A stateful fake of the parts of Stripe Meterops talks to, served over real HTTP.

Started inside the test process (a thread running http.server on 127.0.0.1, a free port) and
reached by the real `stripe` SDK through STRIPE_API_BASE. It enforces what Stripe enforces and
our adapter must cope with:

- v1 requests are form-encoded (`application/x-www-form-urlencoded`; anything else is a 400),
  v2 requests are JSON;
- `Authorization: Bearer <secret key>` on v1 and on meter event session creation; the v2
  meter event stream takes a session's authentication token instead (valid 15 minutes);
- meter event identifiers are unique within 24 hours (of the fake's clock, which tests can
  move): a v1 duplicate is a 400 with no error code and the message "An event already exists
  with identifier <id>." (as Stripe answers it), a v2 duplicate is dropped silently (Stripe
  processes the stream asynchronously);
- `Idempotency-Key`: the same key with the same request within 24 hours replays the first
  answer (header `Idempotent-Replayed: true`), *including a 500* the endpoint failed with
  (`server_error_next`), replayed with `Stripe-Should-Retry: false`; with a different request,
  a 400 `idempotency_error`; while a request with the key is still in flight
  (`in_flight_keys`), a 409 `idempotency_error`;
- meter event timestamps within the past 35 days and at most 5 minutes ahead (400
  `timestamp_too_far_in_past` / `timestamp_in_future`), values of at most 15 significant
  digits (400 `meter_event_value_too_many_digits`, the API version's rule);
- the v2 stream validates asynchronously, as Stripe documents ("Events are processed
  asynchronously, including validation"): a well-formed request is a 200 and an event that
  fails validation is dropped and listed in `error_reports` (what Stripe reports later with
  `v1.billing.meter.error_report_triggered`); an expired session token is a 401
  `temporary_session_expired` / `billing_meter_event_session_expired`;
- at most 100 events per v2 stream request (400 beyond);
- rate limits: every Nth request (`rate_limit_every`), or the next few requests
  (`fail_next`), is answered 429 with a Retry-After header;
- meter event summaries aggregated per UTC day (sum, count or last), paged with
  `starting_after`; start and end must be UTC midnights for the `day` window;
- invoices (made by tests with `create_invoice`) listed per customer, newest first, paged,
  with their lines (the first `embedded_lines` embedded, the rest under /lines);
- customer balance transactions (`POST /v1/customers/{id}/balance_transactions`: integer
  `amount`, negative for a credit, and `currency` required; the customer's `balance` moves by
  the amount, `ending_balance` answered) and credit notes (`POST /v1/credit_notes`: `invoice`
  required and finalized, i.e. open or paid; `amount` at most what is left after earlier
  credit notes; `reason` one of duplicate, fraudulent, order_change, product_unsatisfactory).

Numbers in answers are written as JSON numbers from exact decimals, as Stripe does.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

DAY = 86_400
IDENTIFIER_WINDOW = DAY
PAST_WINDOW = 35 * DAY
FUTURE_WINDOW = 300
SESSION_SECONDS = 15 * 60
V2_MAX_EVENTS = 100
MAX_VALUE_DIGITS = 15
USAGE_PATHS = ("/v1/billing/meter_events", "/v2/billing/meter_event_stream")


def significant_digits(value: Decimal) -> int:
    """Digits from the first to the last non-zero one (1000 and 0.001 have one)."""
    digits = "".join(str(d) for d in value.as_tuple().digits).strip("0")
    return len(digits)


_DECIMAL = re.compile(r'"@dec:(-?[0-9.]+)@"')


def _mark_decimals(value):
    if isinstance(value, Decimal):
        return f"@dec:{plain(value)}@"
    if isinstance(value, dict):
        return {k: _mark_decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark_decimals(v) for v in value]
    return value


def plain(value: Decimal) -> str:
    """Exact digits, no exponent, no trailing zeros (normalize() would round past 28 digits)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in {"", "-0"} else text


def dumps(value) -> bytes:
    """JSON with every Decimal written as a JSON number with its exact digits."""
    text = json.dumps(_mark_decimals(value), default=str)
    return _DECIMAL.sub(r"\1", text).encode()


def nest_form(pairs: list[tuple[str, str]]) -> dict:
    """a[b][c]=1 -> {"a": {"b": {"c": "1"}}} (Stripe's form encoding; a[0][x] lists too)."""
    out: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class MeterEvent:
    identifier: str
    event_name: str
    customer: str
    value: Decimal
    timestamp: int
    received: float
    api: str


@dataclass
class Answer:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


class StripeError(Exception):
    def __init__(
        self, status: int, code: str | None, message: str, type_: str = "invalid_request_error"
    ):
        super().__init__(message)
        error = {"type": type_, "message": message}
        if code is not None:
            error["code"] = code
        self.answer = Answer(status, {"error": error})


class FakeStripe:
    def __init__(
        self,
        *,
        api_key: str = "sk_test_fake",
        rate_limit_every: int = 0,
        retry_after: str | None = "0",
        embedded_lines: int = 10,
    ) -> None:
        self.api_key = api_key
        self.rate_limit_every = rate_limit_every
        self.retry_after = retry_after
        self.embedded_lines = embedded_lines
        self.lock = threading.RLock()
        self.clock_offset = 0.0
        self.customers: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.events: list[MeterEvent] = []
        self.identifiers: dict[str, float] = {}
        self.idempotency: dict[str, tuple[str, Answer, float]] = {}
        self.sessions: dict[str, float] = {}
        self.invoices: list[dict] = []
        self.balance_transactions: list[dict] = []
        self.credit_notes: list[dict] = []
        self.subscriptions: dict[str, dict] = {}
        # Every answer waits this long first (a slow platform).
        self.slow_seconds = 0.0
        self.requests: list[dict] = []
        # Meter event summary requests: (meter, customer, start, end, grouping window or None).
        self.summary_requests: list[tuple[str, str, int, int, str | None]] = []
        self.request_count = 0
        self.forced: deque[int] = deque()
        # 500s raised inside the endpoint (after the idempotency layer), saved for the key.
        self.server_errors = 0
        self.server_errors_applied = False
        # Idempotency keys whose first request is still running (answered 409).
        self.in_flight_keys: set[str] = set()
        # Stream events refused by the asynchronous validation: (identifier, code, message).
        self.error_reports: list[tuple[str, str, str]] = []
        self.stripe_versions: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- test controls -----------------------------------------------------------------------

    def now(self) -> float:
        import time

        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock_offset += seconds

    def fail_next(self, count: int, status: int = 429) -> None:
        """The next `count` requests are refused before the idempotency layer (not saved)."""
        with self.lock:
            self.forced.extend([status] * count)

    def server_error_next(self, count: int = 1, *, applied: bool = False) -> None:
        """The next `count` meter event POSTs fail with a 500 inside the endpoint; the answer
        is saved for the key and replayed, as Stripe does. `applied`: the endpoint had done
        its work before failing (Stripe's 500s are indeterminate)."""
        with self.lock:
            self.server_errors += count
            self.server_errors_applied = applied

    def calls(self, path_prefix: str = "", method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method)
        ]

    def add_customer(self, customer_id: str | None = None, **fields) -> str:
        with self.lock:
            customer_id = customer_id or f"cus_{secrets.token_hex(6)}"
            self.customers[customer_id] = {"id": customer_id, "object": "customer", **fields}
            return customer_id

    def meter_by_event(self, event_name: str) -> dict | None:
        return next((m for m in self.meters.values() if m["event_name"] == event_name), None)

    def total(self, *, event_name: str, customer: str) -> Decimal:
        """What the meter holds for the customer over all time (its formula applied)."""
        meter = self.meter_by_event(event_name)
        if meter is None:
            return Decimal(0)
        rows = [e for e in self.events if e.event_name == event_name and e.customer == customer]
        return self._aggregate(meter["default_aggregation"]["formula"], rows)

    def count_identifier(self, identifier: str) -> int:
        return sum(1 for e in self.events if e.identifier == identifier)

    def create_invoice(
        self,
        *,
        customer: str,
        lines: list[dict],
        period_start: int,
        period_end: int,
        status: str = "open",
        currency: str = "usd",
    ) -> dict:
        """An invoice whose lines bill meters: each line {"price", "event_name",
        "unit_amount_decimal"} gets its quantity from the meter over the period."""
        with self.lock:
            invoice_id = f"in_{secrets.token_hex(6)}"
            out_lines, total = [], 0
            for index, line in enumerate(lines):
                meter = self.meter_by_event(line["event_name"])
                rows = [
                    e
                    for e in self.events
                    if e.event_name == line["event_name"]
                    and e.customer == customer
                    and period_start <= e.timestamp < period_end
                ]
                quantity = self._aggregate(meter["default_aggregation"]["formula"], rows)
                amount = int((quantity * Decimal(line["unit_amount_decimal"])).to_integral_value())
                total += amount
                out_lines.append(
                    {
                        "id": f"il_{invoice_id}_{index}",
                        "object": "line_item",
                        "amount": amount,
                        "currency": currency,
                        "description": line.get("description", line["event_name"]),
                        "quantity": int(quantity),
                        "quantity_decimal": plain(quantity),
                        "period": {"start": period_start, "end": period_end},
                        "pricing": {
                            "type": "price_details",
                            "price_details": {"price": line["price"], "product": "prod_x"},
                        },
                    }
                )
            invoice = {
                "id": invoice_id,
                "object": "invoice",
                "customer": customer,
                "status": status,
                "currency": currency,
                "number": f"FAKE-{len(self.invoices) + 1:04d}",
                "total": total,
                "subtotal": total,
                "created": int(self.now()) + len(self.invoices),
                "period_start": period_start,
                "period_end": period_end,
                "all_lines": out_lines,
            }
            self.invoices.append(invoice)
            return invoice

    def add_subscription(
        self,
        *,
        customer: str,
        items: list[dict],
        period_start: int,
        period_end: int,
        currency: str = "usd",
        status: str = "active",
    ) -> dict:
        """A subscription whose items are {"price", "event_name", "unit_amount_decimal"}
        (metered, on the meter of that event name) or {"price", "unit_amount", "quantity"}
        (licensed, billed for the next period)."""
        with self.lock:
            subscription_id = f"sub_{secrets.token_hex(6)}"
            out_items = []
            for index, item in enumerate(items):
                recurring = {"interval": "month", "interval_count": 1}
                price = {
                    "id": item["price"],
                    "object": "price",
                    "currency": currency,
                    "billing_scheme": "per_unit",
                    "recurring": recurring,
                }
                if "event_name" in item:
                    recurring["usage_type"] = "metered"
                    recurring["meter"] = self.meter_by_event(item["event_name"])["id"]
                    price["unit_amount_decimal"] = item["unit_amount_decimal"]
                    quantity = None
                else:
                    recurring["usage_type"] = "licensed"
                    price["unit_amount"] = int(item["unit_amount"])
                    price["unit_amount_decimal"] = str(item["unit_amount"])
                    quantity = int(item.get("quantity", 1))
                out_items.append(
                    {
                        "id": f"si_{subscription_id}_{index}",
                        "object": "subscription_item",
                        "price": price,
                        "quantity": quantity,
                        "current_period_start": period_start,
                        "current_period_end": period_end,
                        "subscription": subscription_id,
                    }
                )
            subscription = {
                "id": subscription_id,
                "object": "subscription",
                "customer": customer,
                "status": status,
                "currency": currency,
                "created": int(self.now()) + len(self.subscriptions),
                "items": {
                    "object": "list",
                    "url": f"/v1/subscription_items?subscription={subscription_id}",
                    "has_more": False,
                    "data": out_items,
                },
            }
            self.subscriptions[subscription_id] = subscription
            return subscription

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> Answer:
        if self.slow_seconds:
            # A platform slower than the client will wait (outside the lock: others go on).
            import time

            time.sleep(self.slow_seconds)
        with self.lock:
            self.request_count += 1
            version = headers.get("Stripe-Version")
            if version:
                self.stripe_versions.add(version)
            record = {
                "method": method,
                "path": path,
                "content_type": headers.get("Content-Type", ""),
                "idempotency_key": headers.get("Idempotency-Key", ""),
                "body": raw,
            }
            self.requests.append(record)
            if self.forced or (
                self.rate_limit_every and self.request_count % self.rate_limit_every == 0
            ):
                status = self.forced.popleft() if self.forced else 429
                record["status"] = status
                return self._throttled(status)
            try:
                answer = self._idempotent(method, path, query, headers, raw)
            except StripeError as exc:
                answer = exc.answer
            record["status"] = answer.status
            return answer

    def _throttled(self, status: int) -> Answer:
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        if status == 429:
            body = {
                "error": {
                    "type": "rate_limit",
                    "code": "rate_limit",
                    "message": "Too many requests hit the API too quickly.",
                }
            }
        else:
            body = {"error": {"type": "api_error", "message": "Something went wrong."}}
        return Answer(status, body, headers)

    def _idempotent(self, method, path, query, headers, raw) -> Answer:
        key = headers.get("Idempotency-Key")
        if method != "POST" or not key:
            return self._route(method, path, query, headers, raw)
        if key in self.in_flight_keys:
            raise StripeError(
                409,
                "idempotency_key_in_use",
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                "going through). Please try again later.",
                type_="idempotency_error",
            )
        fingerprint = f"{method} {path} {raw!r}"
        seen = self.idempotency.get(key)
        if seen is not None and self.now() - seen[2] < IDENTIFIER_WINDOW:
            if seen[0] != fingerprint:
                raise StripeError(
                    400,
                    "idempotency_key_in_use",
                    "Keys for idempotent requests can only be used with the same parameters.",
                    type_="idempotency_error",
                )
            replay = seen[1]
            return Answer(
                replay.status, replay.body, {**replay.headers, "Idempotent-Replayed": "true"}
            )
        if self.server_errors and path in USAGE_PATHS:
            self.server_errors -= 1
            if self.server_errors_applied:
                self._route(method, path, query, headers, raw)
            answer = Answer(
                500,
                {"error": {"type": "api_error", "message": "An unknown error occurred."}},
                # Retrying the same key would only replay this answer.
                {"Stripe-Should-Retry": "false"},
            )
            self.idempotency[key] = (fingerprint, answer, self.now())
            return answer
        answer = self._route(method, path, query, headers, raw)
        if answer.status == 200:
            # Like Stripe: a request refused before it ran stores no idempotent result.
            self.idempotency[key] = (fingerprint, answer, self.now())
        return answer

    def _auth(self, headers, *, token: bool = False) -> None:
        bearer = headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token:
            expires = self.sessions.get(bearer)
            if expires is None:
                raise StripeError(401, "invalid_api_key", "Invalid API key provided.")
            if expires <= self.now():
                raise StripeError(
                    401,
                    "billing_meter_event_session_expired",
                    "The temporary session token has expired.",
                    type_="temporary_session_expired",
                )
            return
        if bearer != self.api_key:
            raise StripeError(401, "invalid_api_key", "Invalid API key provided.")

    def _form(self, headers, raw: bytes) -> dict:
        if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            raise StripeError(400, "invalid_content_type", "v1 requests are form-encoded.")
        return nest_form(parse_qsl(raw.decode(), keep_blank_values=True))

    def _json(self, headers, raw: bytes) -> dict:
        if not headers.get("Content-Type", "").startswith("application/json"):
            raise StripeError(400, "invalid_content_type", "v2 requests are JSON.")
        try:
            return json.loads(raw or b"{}")
        except ValueError as exc:
            raise StripeError(400, "invalid_json", "The body is not JSON.") from exc

    def _route(self, method, path, query, headers, raw) -> Answer:
        if path == "/v2/billing/meter_event_stream" and method == "POST":
            self._auth(headers, token=True)
            return self._stream(self._json(headers, raw))
        self._auth(headers)
        if path == "/v2/billing/meter_event_session" and method == "POST":
            self._json(headers, raw)
            return self._session()
        if method == "POST":
            form = self._form(headers, raw)
            if path == "/v1/customers":
                customer_id = self.add_customer(
                    name=form.get("name", ""), metadata=form.get("metadata", {})
                )
                return Answer(200, self.customers[customer_id])
            if path == "/v1/billing/meters":
                return self._create_meter(form)
            if path == "/v1/billing/meter_events":
                return self._meter_event_v1(form)
            match = re.fullmatch(r"/v1/customers/([^/]+)/balance_transactions", path)
            if match:
                return self._balance_transaction(match.group(1), form)
            if path == "/v1/credit_notes":
                return self._credit_note(form)
            if path == "/v1/invoices/create_preview":
                return self._preview(form)
        if method == "GET":
            if path == "/v1/billing/meters":
                return self._list(list(self.meters.values()), query, "/v1/billing/meters")
            match = re.fullmatch(r"/v1/billing/meters/([^/]+)/event_summaries", path)
            if match:
                return self._summaries(match.group(1), query)
            if path == "/v1/invoices":
                return self._invoices(query)
            if path == "/v1/subscriptions":
                return self._subscriptions(query)
            match = re.fullmatch(r"/v1/invoices/([^/]+)/lines", path)
            if match:
                return self._lines(match.group(1), query)
            match = re.fullmatch(r"/v1/customers/([^/]+)", path)
            if match and match.group(1) in self.customers:
                return Answer(200, self.customers[match.group(1)])
        raise StripeError(404, "resource_missing", f"Unrecognized request URL ({method} {path}).")

    # --- credits -------------------------------------------------------------------------------

    @staticmethod
    def _integer(form: dict, name: str) -> int:
        raw = form.get(name)
        if raw in (None, ""):
            raise StripeError(400, "parameter_missing", f"Missing required param: {name}.")
        try:
            return int(raw)
        except ValueError as exc:
            raise StripeError(400, "parameter_invalid_integer", f"Invalid integer: {raw}") from exc

    def _balance_transaction(self, customer_id: str, form: dict) -> Answer:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise StripeError(404, "resource_missing", f"No such customer: '{customer_id}'")
        amount = self._integer(form, "amount")
        currency = form.get("currency", "")
        if not currency:
            raise StripeError(400, "parameter_missing", "Missing required param: currency.")
        balance = customer.get("balance", 0) + amount
        customer["balance"] = balance
        customer["currency"] = currency
        transaction = {
            "id": f"cbtxn_{secrets.token_hex(8)}",
            "object": "customer_balance_transaction",
            "amount": amount,
            "created": int(self.now()),
            "credit_note": None,
            "currency": currency,
            "customer": customer_id,
            "description": form.get("description"),
            "ending_balance": balance,
            "invoice": None,
            "livemode": False,
            "metadata": form.get("metadata", {}),
            "type": "adjustment",
        }
        self.balance_transactions.append(transaction)
        return Answer(200, transaction)

    def _credit_note(self, form: dict) -> Answer:
        invoice_id = form.get("invoice", "")
        if not invoice_id:
            raise StripeError(400, "parameter_missing", "Missing required param: invoice.")
        invoice = next((i for i in self.invoices if i["id"] == invoice_id), None)
        if invoice is None:
            raise StripeError(404, "resource_missing", f"No such invoice: '{invoice_id}'")
        if invoice["status"] not in ("open", "paid"):
            raise StripeError(
                400,
                "invoice_not_finalized",
                "Credit notes can only be issued for finalized (open or paid) invoices.",
            )
        reason = form.get("reason")
        if reason is not None and reason not in (
            "duplicate",
            "fraudulent",
            "order_change",
            "product_unsatisfactory",
        ):
            raise StripeError(400, "parameter_invalid_enum", f"Invalid reason: {reason}")
        amount = self._integer(form, "amount")
        credited = sum(n["amount"] for n in self.credit_notes if n["invoice"] == invoice_id)
        if amount <= 0 or amount > invoice["total"] - credited:
            raise StripeError(
                400,
                "credit_note_amount_too_large",
                "The credit note's amount must be positive and at most the invoice's "
                "remaining amount.",
            )
        note = {
            "id": f"cn_{secrets.token_hex(8)}",
            "object": "credit_note",
            "amount": amount,
            "total": amount,
            "subtotal": amount,
            "created": int(self.now()),
            "currency": invoice["currency"],
            "customer": invoice["customer"],
            "invoice": invoice_id,
            "memo": form.get("memo"),
            "metadata": form.get("metadata", {}),
            "number": f"{invoice['number']}-CN-{len(self.credit_notes) + 1:02d}",
            "reason": reason,
            "status": "issued",
            "type": "pre_payment" if invoice["status"] == "open" else "post_payment",
        }
        self.credit_notes.append(note)
        return Answer(200, note)

    # --- meters and meter events ---------------------------------------------------------------

    def _create_meter(self, form: dict) -> Answer:
        event_name = form.get("event_name", "")
        formula = (form.get("default_aggregation") or {}).get("formula")
        if not event_name or formula not in {"sum", "count", "last"}:
            raise StripeError(400, "parameter_invalid", "event_name and a formula are required.")
        if self.meter_by_event(event_name):
            raise StripeError(
                400, "resource_already_exists", f"A meter with event_name {event_name} exists."
            )
        meter_id = f"mtr_{secrets.token_hex(6)}"
        self.meters[meter_id] = {
            "id": meter_id,
            "object": "billing.meter",
            "display_name": form.get("display_name", ""),
            "event_name": event_name,
            "status": "active",
            "default_aggregation": {"formula": formula},
            "customer_mapping": form.get("customer_mapping", {}),
            "value_settings": form.get("value_settings", {}),
        }
        return Answer(200, self.meters[meter_id])

    def _check_event(self, event_name, payload, timestamp: int) -> Decimal:
        if not self.meter_by_event(event_name):
            raise StripeError(400, "no_meter", f"No active meter for event_name {event_name}.")
        customer = (payload or {}).get("stripe_customer_id")
        if customer not in self.customers:
            raise StripeError(400, "customer_not_found", f"No such customer: {customer}.")
        try:
            value = Decimal(str((payload or {}).get("value")))
        except InvalidOperation as exc:
            raise StripeError(400, "meter_event_invalid_value", "value is not a number.") from exc
        if not value.is_finite():
            raise StripeError(400, "meter_event_invalid_value", "value is not a number.")
        if significant_digits(value) > MAX_VALUE_DIGITS:
            raise StripeError(
                400,
                "meter_event_value_too_many_digits",
                f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. "
                f"Received {plain(value)}.",
            )
        now = self.now()
        if timestamp < now - PAST_WINDOW:
            raise StripeError(
                400,
                "timestamp_too_far_in_past",
                "Timestamp must be within the past 35 calendar days.",
            )
        if timestamp > now + FUTURE_WINDOW:
            raise StripeError(
                400, "timestamp_in_future", "Timestamp must be at most 5 minutes in the future."
            )
        return value

    def _duplicate(self, identifier: str) -> bool:
        seen = self.identifiers.get(identifier)
        return seen is not None and self.now() - seen < IDENTIFIER_WINDOW

    def _meter_event_v1(self, form: dict) -> Answer:
        try:
            timestamp = int(form.get("timestamp") or self.now())
        except ValueError as exc:
            raise StripeError(400, "parameter_invalid", "timestamp is an integer.") from exc
        value = self._check_event(form.get("event_name"), form.get("payload"), timestamp)
        identifier = form.get("identifier") or f"gen_{secrets.token_hex(8)}"
        if self._duplicate(identifier):
            # Stripe's answer carries no error code, only this message.
            raise StripeError(400, None, f"An event already exists with identifier {identifier}.")
        event = MeterEvent(
            identifier,
            form["event_name"],
            form["payload"]["stripe_customer_id"],
            value,
            timestamp,
            self.now(),
            "v1",
        )
        self.events.append(event)
        self.identifiers[identifier] = self.now()
        return Answer(
            200,
            {
                "object": "billing.meter_event",
                "created": int(self.now()),
                "event_name": event.event_name,
                "identifier": identifier,
                "livemode": False,
                "payload": form["payload"],
                "timestamp": timestamp,
            },
        )

    def _session(self) -> Answer:
        token = f"mes_tok_{secrets.token_hex(12)}"
        now = self.now()
        self.sessions[token] = now + SESSION_SECONDS

        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

        return Answer(
            200,
            {
                "id": f"mes_{secrets.token_hex(6)}",
                "object": "v2.billing.meter_event_session",
                "authentication_token": token,
                "created": iso(now),
                "expires_at": iso(now + SESSION_SECONDS),
                "livemode": False,
            },
        )

    def _stream(self, body: dict) -> Answer:
        events = body.get("events")
        if not isinstance(events, list) or not events:
            raise StripeError(400, "parameter_missing", "events is required.")
        if len(events) > V2_MAX_EVENTS:
            raise StripeError(
                400,
                "too_many_events",
                f"A request takes at most {V2_MAX_EVENTS} events, got {len(events)}.",
            )
        accepted = []
        for item in events:
            try:
                when = datetime.fromisoformat(str(item.get("timestamp")).replace("Z", "+00:00"))
            except ValueError as exc:
                raise StripeError(400, "parameter_invalid", "timestamp is RFC 3339.") from exc
            accepted.append((item, int(when.timestamp())))
        for item, timestamp in accepted:
            identifier = item.get("identifier") or f"gen_{secrets.token_hex(8)}"
            try:
                # Validated asynchronously: a bad event is dropped and reported later.
                value = self._check_event(item.get("event_name"), item.get("payload"), timestamp)
            except StripeError as exc:
                error = exc.answer.body["error"]
                self.error_reports.append((identifier, error["code"], error["message"]))
                continue
            if self._duplicate(identifier):
                continue  # processed asynchronously by Stripe: a duplicate is dropped
            self.events.append(
                MeterEvent(
                    identifier,
                    item["event_name"],
                    item["payload"]["stripe_customer_id"],
                    value,
                    timestamp,
                    self.now(),
                    "v2",
                )
            )
            self.identifiers[identifier] = self.now()
        return Answer(200, {})

    # --- reads -----------------------------------------------------------------------------------

    @staticmethod
    def _aggregate(formula: str, rows: list[MeterEvent]) -> Decimal:
        if formula == "count":
            return Decimal(len(rows))
        if formula == "last":
            if not rows:
                return Decimal(0)
            return max(rows, key=lambda e: (e.timestamp, e.received)).value
        return sum((e.value for e in rows), Decimal(0))

    def _list(self, items: list[dict], query: dict, url: str) -> Answer:
        limit = min(int(query.get("limit", 10)), 100)
        start = 0
        after = query.get("starting_after")
        if after:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise StripeError(400, "parameter_invalid", f"No such object: {after}.")
            start = ids.index(after) + 1
        page = items[start : start + limit]
        return Answer(
            200,
            {
                "object": "list",
                "url": url,
                "has_more": start + limit < len(items),
                "data": page,
            },
        )

    def _summaries(self, meter_id: str, query: dict) -> Answer:
        meter = self.meters.get(meter_id)
        if meter is None:
            raise StripeError(404, "resource_missing", f"No such meter: {meter_id}.")
        customer = query.get("customer")
        if not customer:
            raise StripeError(400, "parameter_missing", "customer is required.")
        start, end = int(query["start_time"]), int(query["end_time"])
        # Stripe's documented rules: bounds on minute boundaries; with a grouping window, on
        # that window's (UTC) boundaries; without one, a single summary for the whole range.
        if start % 60 or end % 60:
            raise StripeError(
                400,
                "parameter_invalid",
                "start_time and end_time must be aligned with minute boundaries.",
            )
        window = query.get("value_grouping_window")
        if window not in (None, "", "day", "hour"):
            raise StripeError(400, "parameter_invalid", f"Invalid value_grouping_window: {window}")
        size = {"day": DAY, "hour": 3600}.get(window or "")
        if size and (start % size or end % size):
            raise StripeError(
                400,
                "parameter_invalid",
                f"start_time and end_time must be aligned with {window} boundaries (UTC).",
            )
        self.summary_requests.append((meter_id, customer, start, end, window or None))
        rows = [
            e
            for e in self.events
            if e.event_name == meter["event_name"]
            and e.customer == customer
            and start <= e.timestamp < end
        ]
        formula = meter["default_aggregation"]["formula"]
        buckets: dict[int, list[MeterEvent]] = {}
        if size is None:
            buckets[start] = rows
        for event in rows if size else []:
            buckets.setdefault(event.timestamp - event.timestamp % size, []).append(event)
        summaries = [
            {
                "id": f"mtrusg_{meter_id}_{bucket}",
                "object": "billing.meter_event_summary",
                "aggregated_value": self._aggregate(formula, buckets[bucket]),
                "start_time": bucket,
                "end_time": bucket + size if size else end,
                "livemode": False,
                "meter": meter_id,
            }
            for bucket in sorted(buckets)
        ]
        return self._list(summaries, query, f"/v1/billing/meters/{meter_id}/event_summaries")

    def _subscriptions(self, query: dict) -> Answer:
        customer = query.get("customer")
        status = query.get("status")
        items = [
            sub
            for sub in sorted(self.subscriptions.values(), key=lambda s: (-s["created"], s["id"]))
            if (not customer or sub["customer"] == customer)
            and (
                status == "all"
                or (sub["status"] == status if status else sub["status"] != "canceled")
            )
        ]
        return self._list(items, query, "/v1/subscriptions")

    def _preview(self, form: dict) -> Answer:
        customer = form.get("customer", "")
        subscription_id = form.get("subscription", "")
        if not subscription_id:
            # Since 2025-03-31.basil a preview names what it previews (no customer-wide one).
            raise StripeError(
                400,
                "parameter_missing",
                "You must pass subscription, subscription_details.items, schedule, "
                "schedule_details.phases or invoice_items with customer.",
            )
        if customer and customer not in self.customers:
            raise StripeError(404, "resource_missing", f"No such customer: '{customer}'")
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            raise StripeError(404, "resource_missing", f"No such subscription: '{subscription_id}'")
        if customer and subscription["customer"] != customer:
            raise StripeError(
                400,
                "parameter_invalid",
                f"The subscription {subscription_id} does not belong to customer {customer}.",
            )
        if subscription["status"] in ("canceled", "incomplete_expired", "paused"):
            raise StripeError(
                400,
                "invoice_upcoming_none",
                "No upcoming invoices for customer: " + subscription["customer"],
            )
        customer = subscription["customer"]
        preview_id = f"upcoming_in_{secrets.token_hex(6)}"
        lines, total, starts, ends = [], 0, [], []
        for index, item in enumerate(subscription["items"]["data"]):
            price = item["price"]
            start, end = item["current_period_start"], item["current_period_end"]
            if price["recurring"]["usage_type"] == "metered":
                meter = self.meters[price["recurring"]["meter"]]
                rows = [
                    e
                    for e in self.events
                    if e.event_name == meter["event_name"]
                    and e.customer == customer
                    and start <= e.timestamp < min(end, int(self.now()) + FUTURE_WINDOW)
                ]
                quantity = self._aggregate(meter["default_aggregation"]["formula"], rows)
                amount = int(
                    (quantity * Decimal(price["unit_amount_decimal"])).quantize(
                        Decimal(1), rounding=ROUND_HALF_UP
                    )
                )
                period = {"start": start, "end": end}
            else:
                quantity = Decimal(item["quantity"])
                amount = price["unit_amount"] * item["quantity"]
                period = {"start": end, "end": end + (end - start)}
            starts.append(start)
            ends.append(end)
            total += amount
            lines.append(
                {
                    "id": f"il_tmp_{preview_id}_{index}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": subscription["currency"],
                    "description": price["id"],
                    "invoice": preview_id,
                    "quantity": int(quantity),
                    "quantity_decimal": plain(quantity),
                    "period": period,
                    "parent": {
                        "type": "subscription_item_details",
                        "subscription_item_details": {
                            "subscription": subscription["id"],
                            "subscription_item": item["id"],
                            "proration": False,
                        },
                    },
                    "pricing": {
                        "type": "price_details",
                        "price_details": {"price": price["id"], "product": "prod_x"},
                        "unit_amount_decimal": price["unit_amount_decimal"],
                    },
                }
            )
        return Answer(
            200,
            {
                "id": preview_id,
                "object": "invoice",
                "customer": customer,
                "status": "draft",
                "currency": subscription["currency"],
                "number": None,
                "billing_reason": "upcoming",
                "total": total,
                "subtotal": total,
                "amount_due": total,
                "created": int(self.now()),
                "period_start": min(starts, default=int(self.now())),
                "period_end": max(ends, default=int(self.now())),
                "lines": {
                    "object": "list",
                    "url": f"/v1/invoices/{preview_id}/lines",
                    "has_more": False,
                    "data": lines,
                },
            },
        )

    def _public(self, invoice: dict) -> dict:
        lines = invoice["all_lines"]
        return {
            **{k: v for k, v in invoice.items() if k != "all_lines"},
            "lines": {
                "object": "list",
                "url": f"/v1/invoices/{invoice['id']}/lines",
                "has_more": len(lines) > self.embedded_lines,
                "data": lines[: self.embedded_lines],
            },
        }

    def _invoices(self, query: dict) -> Answer:
        customer = query.get("customer")
        since = int(query.get("created[gte]", 0))
        items = [
            self._public(inv)
            for inv in sorted(self.invoices, key=lambda i: -i["created"])
            if (not customer or inv["customer"] == customer) and inv["created"] >= since
        ]
        return self._list(items, query, "/v1/invoices")

    def _lines(self, invoice_id: str, query: dict) -> Answer:
        invoice = next((i for i in self.invoices if i["id"] == invoice_id), None)
        if invoice is None:
            raise StripeError(404, "resource_missing", f"No such invoice: {invoice_id}.")
        return self._list(invoice["all_lines"], query, f"/v1/invoices/{invoice_id}/lines")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    state: FakeStripe

    def log_message(self, format, *args):
        pass

    def _serve(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        answer = self.state.handle(method, parts.path, query, self.headers, raw)
        body = dumps(answer.body)
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", f"req_{secrets.token_hex(6)}")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a test of its timeout)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def days_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=n)
