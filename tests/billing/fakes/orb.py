"""A stateful fake of the parts of Orb Meterops talks to, served over real HTTP.

Written from Orb's API reference (the docstrings of the official `orb-billing` SDK, which the
adapter drives against it through ORB_API_BASE = `<url>/v1`). It enforces what Orb documents:

- `Authorization: Bearer <api key>` on every request (401 otherwise);
- `POST /ingest`: events `{idempotency_key, customer_id | external_customer_id (exactly one),
  event_name, timestamp, properties}`; "exactly one event with a given idempotency key will be
  ingested", for good (no expiry); timestamps older than the account's grace period
  (`grace_seconds`) or more than 5 minutes ahead fail validation; property values must be
  numbers, strings or booleans. Any validation failure answers 400 with `validation_failed`
  (the key and its errors) and ingests nothing of the request; the same key with a different
  body twice in one request rejects the request. `?debug=true` adds `debug: {duplicate,
  ingested}`; a 200 has `validation_failed: []`;
- `Idempotency-Key` on other POSTs: the same key replays the first answer;
- rate limits: every Nth request (`rate_limit_every`) or the next few (`fail_next`) are
  answered 429 (Orb's `#429-too-many-requests` error type) with a Retry-After header;
- customers by external id (`GET /customers/external_customer_id/{id}`; a second customer
  with the same external id is a 400 `#400-duplicate-resource-creation`), items, billable
  metrics defined by SQL (`SELECT SUM(value)|MAX(value)|COUNT(*)|LATEST_BY(value, timestamp)
  FROM events WHERE event_name = '...'`, LATEST_BY being Orb's "latest value of
  value_property ordered by time_based_property"; other SQL is refused: the fake evaluates
  only these);
- subscriptions (made by tests with `subscribe`; every metric is on every subscription's
  plan, at the unit price the test gives) and `GET /subscriptions/{id}/usage` with a custom
  timeframe, `granularity=day` windows at the customer's (UTC) midnight, every window listed
  even when empty, or one window over exactly the timeframe;
- events deprecated (`PUT /events/{key}/deprecate`) no longer count;
- backfills: `POST /events/backfills` (scoped to a customer by customer_id or
  external_customer_id, or account-wide; timeframe_start < timeframe_end at most 31 days apart
  and, without a deprecation_filter, no later than the grace boundary; refused when it
  overlaps a backfill in pending or pending_revert of the same customer or an account-wide
  one; close_time defaults to a day after creation), `POST /ingest?backfill_id=` (events
  inside the backfill's timeframe and scope, of any age; the same key, backfill or not, is
  ingested once: a duplicate), `POST .../close` (Orb then reflects it asynchronously: the
  status stays `pending` for `reflect_seconds`, then `reflected`; an open backfill past its
  close_time closes itself), `POST .../revert`, `GET /events/backfills[/{id}]`. Events of a
  backfill count once it is reflected (and no more once reverted); a reflected backfill with
  replace_existing_events deprecates the other events of its scope and timeframe;
- invoices (made by tests with `create_invoice`) listed per external customer, newest first,
  cursor-paged; `GET /invoices/upcoming?subscription_id=` priced from the current usage;
- `POST /customers/{id}/balance_transactions` (credits).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import ThreadingHTTPServer
from urllib.parse import unquote

from tests.billing.fake_stripe import Answer, _Handler, plain

DAY = 86_400
FUTURE_WINDOW = 300
ERR = "https://docs.withorb.com/reference/error-responses#"
SQL = re.compile(
    r"^SELECT (SUM\(value\)|MAX\(value\)|COUNT\(\*\)|LATEST_BY\(value, timestamp\)) "
    r"FROM events WHERE event_name = '([^']+)'$"
)


@dataclass
class OrbEvent:
    idempotency_key: str
    customer: str  # the external customer id (or the Orb id when sent by customer_id)
    event_name: str
    timestamp: float
    properties: dict
    received: float
    deprecated: bool = False
    backfill_id: str = ""

    @property
    def value(self) -> Decimal:
        return Decimal(str(self.properties.get("value", 0)))


class OrbError(Exception):
    def __init__(self, status: int, kind: str, title: str, **extra):
        super().__init__(title)
        self.answer = Answer(
            status, {"type": ERR + kind, "status": status, "title": title, **extra}
        )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _ts(text: str) -> float:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.timestamp()


class FakeOrb:
    def __init__(
        self,
        *,
        api_key: str = "orb_test_fake",
        grace_seconds: int = 12 * 3600,
        rate_limit_every: int = 0,
        retry_after: str | None = "0",
        reflect_seconds: float = 30.0,
    ) -> None:
        self.api_key = api_key
        self.reflect_seconds = reflect_seconds
        self.backfills: dict[str, dict] = {}
        self.grace_seconds = grace_seconds
        self.rate_limit_every = rate_limit_every
        self.retry_after = retry_after
        self.lock = threading.RLock()
        self.clock_offset = 0.0
        self.customers: dict[str, dict] = {}
        self.items: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}
        self.events: list[OrbEvent] = []
        self.keys: dict[str, OrbEvent] = {}
        self.subscriptions: dict[str, dict] = {}
        self.invoices: list[dict] = []
        self.balance_transactions: list[dict] = []
        self.idempotency: dict[str, Answer] = {}
        self.requests: list[dict] = []
        self.request_count = 0
        self.forced: deque[int] = deque()
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
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- test controls -----------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock_offset += seconds

    def fail_next(self, count: int, status: int = 429) -> None:
        with self.lock:
            self.forced.extend([status] * count)

    def calls(self, path_prefix: str = "", method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method)
        ]

    def metric_by_event(self, event_name: str) -> dict | None:
        return next(
            (m for m in self.metrics.values() if m["event_name"] == event_name and not m["off"]),
            None,
        )

    def counted(self, *, event_name: str | None = None, customer: str | None = None):
        with self.lock:
            self._tick()
            return [
                e
                for e in self.events
                if not e.deprecated
                and self._in_billing(e)
                and (event_name is None or e.event_name == event_name)
                and (customer is None or e.customer == customer)
            ]

    def _in_billing(self, event: OrbEvent) -> bool:
        if event.backfill_id and self.backfills[event.backfill_id]["status"] != "reflected":
            return False  # pending (not reflected yet), or reverted
        for backfill in self.backfills.values():
            if (
                backfill["replace_existing_events"]
                and backfill["status"] == "reflected"
                and backfill["id"] != event.backfill_id
                and backfill["timeframe_start"] <= event.timestamp < backfill["timeframe_end"]
                and (backfill["external"] is None or backfill["external"] == event.customer)
            ):
                return False
        return True

    def reflect_backfills(self) -> None:
        """As if Orb had finished reflecting every closed backfill (and undoing reverted ones)."""
        self.advance(self.reflect_seconds)
        with self.lock:
            self._tick()

    def _tick(self) -> None:
        now = self.now()
        for backfill in self.backfills.values():
            if backfill["status"] == "pending" and backfill["close_time"] <= now:
                if now >= backfill["close_time"] + self.reflect_seconds:
                    backfill["status"] = "reflected"
            elif backfill["status"] == "pending_revert" and now >= (
                backfill["reverted_at"] + self.reflect_seconds
            ):
                backfill["status"] = "reverted"

    def total(self, *, event_name: str, customer: str) -> Decimal:
        return sum(
            (e.value for e in self.counted(event_name=event_name, customer=customer)), Decimal(0)
        )

    def count_key(self, key: str) -> int:
        return sum(1 for e in self.events if e.idempotency_key == key and not e.deprecated)

    def subscribe(
        self,
        external_customer_id: str,
        *,
        unit_prices: dict | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> str:
        """An active subscription of the customer (every metric on its plan)."""
        with self.lock:
            sid = f"sub_{secrets.token_hex(6)}"
            now = self.now()
            self.subscriptions[sid] = {
                "id": sid,
                "external_customer_id": external_customer_id,
                "status": "active",
                "start": start if start is not None else now - 40 * DAY,
                "period_start": now - (now % DAY) - 10 * DAY,
                "period_end": end if end is not None else now - (now % DAY) + 20 * DAY,
                "unit_prices": dict(unit_prices or {}),
                "created_at": now,
            }
            return sid

    def create_invoice(
        self,
        *,
        external_customer_id: str,
        lines: list[tuple[str, Decimal, Decimal]],
        currency: str = "USD",
        status: str = "issued",
    ) -> dict:
        """An issued invoice: lines of (metric id, quantity, amount in currency units)."""
        with self.lock:
            now = self.now() + len(self.invoices)
            invoice = {
                "id": f"inv_{secrets.token_hex(6)}",
                "invoice_number": f"ORB-{len(self.invoices) + 1:05d}",
                "status": status,
                "currency": currency,
                "customer": {"external_customer_id": external_customer_id},
                "invoice_date": _iso(now),
                "created_at": _iso(now),
                "due_date": _iso(now + 30 * DAY),
                "line_items": [
                    self._line(metric_id, quantity, amount, now - 30 * DAY, now)
                    for metric_id, quantity, amount in lines
                ],
            }
            invoice["total"] = plain(
                sum((Decimal(li["amount"]) for li in invoice["line_items"]), Decimal(0))
            )
            self.invoices.append(invoice)
            return invoice

    def _line(self, metric_id: str, quantity: Decimal, amount: Decimal, start: float, end: float):
        metric = self.metrics.get(metric_id, {})
        return {
            "id": f"ili_{secrets.token_hex(6)}",
            "name": metric.get("name", metric_id),
            "quantity": quantity,
            "amount": plain(amount),
            "start_date": _iso(start),
            "end_date": _iso(end),
            "price": {"id": f"price_{metric_id}", "billable_metric": {"id": metric_id}},
        }

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> Answer:
        with self.lock:
            self._tick()
            self.request_count += 1
            record = {
                "method": method,
                "path": path,
                "query": query,
                "body": raw,
                "idempotency_key": headers.get("Idempotency-Key", ""),
            }
            self.requests.append(record)
            if self.forced or (
                self.rate_limit_every and self.request_count % self.rate_limit_every == 0
            ):
                status = self.forced.popleft() if self.forced else 429
                record["status"] = status
                kind = "429-too-many-requests" if status == 429 else "500-internal-server-error"
                answer = OrbError(
                    status, kind, "Too many requests" if status == 429 else "Server error"
                ).answer
                if self.retry_after is not None:
                    answer.headers["Retry-After"] = self.retry_after
                return answer
            try:
                if headers.get("Authorization") != f"Bearer {self.api_key}":
                    raise OrbError(401, "401-authentication-error", "Authentication failed")
                key = headers.get("Idempotency-Key")
                if method == "POST" and key and not path.endswith("/ingest"):
                    if key in self.idempotency:
                        answer = self.idempotency[key]
                    else:
                        answer = self._route(method, path, query, raw)
                        if answer.status < 500:
                            self.idempotency[key] = answer
                else:
                    answer = self._route(method, path, query, raw)
            except OrbError as exc:
                answer = exc.answer
            record["status"] = answer.status
            return answer

    def _route(self, method, path, query, raw) -> Answer:
        if not path.startswith("/v1/"):
            raise OrbError(404, "404-url-not-found", "URL not found")
        parts = [unquote(p) for p in path[len("/v1/") :].split("/")]
        body = json.loads(raw, parse_float=Decimal) if raw else {}
        match method, parts:
            case "POST", ["ingest"]:
                return self._ingest(body, query)
            case "POST", ["customers"]:
                return self._create_customer(body)
            case "GET", ["customers", "external_customer_id", external_id]:
                return Answer(200, self._customer_by_external(external_id))
            case "POST", ["customers", customer_id, "balance_transactions"]:
                return self._balance(customer_id, body)
            case "POST", ["items"]:
                item = {"id": f"item_{secrets.token_hex(6)}", "name": body.get("name", "")}
                self.items[item["id"]] = item
                return Answer(201, item)
            case "POST", ["metrics"]:
                return self._create_metric(body)
            case "GET", ["metrics"]:
                return self._page([self._public_metric(m) for m in self.metrics.values()], query)
            case "GET", ["subscriptions"]:
                return self._subscriptions(query)
            case "GET", ["subscriptions", sid, "usage"]:
                return self._usage(sid, query)
            case "GET", ["invoices"]:
                return self._invoices(query)
            case "GET", ["invoices", "upcoming"]:
                return self._upcoming(query)
            case "POST", ["events", "backfills"]:
                return self._create_backfill(body)
            case "GET", ["events", "backfills"]:
                rows = [
                    self._public_backfill(b)
                    for b in sorted(self.backfills.values(), key=lambda b: -b["created_at"])
                    if (not query.get("status") or b["status"] == query["status"])
                    and (not query.get("customer_id") or b["customer_id"] == query["customer_id"])
                ]
                return self._page(rows, query)
            case "GET", ["events", "backfills", bid]:
                return Answer(200, self._public_backfill(self._backfill(bid)))
            case "POST", ["events", "backfills", bid, "close"]:
                backfill = self._backfill(bid)
                if backfill["status"] != "pending" or backfill["close_time"] <= self.now():
                    raise OrbError(
                        400, "400-request-validation-errors", "The backfill is already closed"
                    )
                backfill["close_time"] = self.now()
                return Answer(200, self._public_backfill(backfill))
            case "POST", ["events", "backfills", bid, "revert"]:
                backfill = self._backfill(bid)
                now = self.now()
                if backfill["status"] == "pending" and backfill["close_time"] > now:
                    backfill["status"] = "reverted"  # never closed: nothing to undo
                elif backfill["status"] == "reflected":
                    backfill["status"] = "pending_revert"
                else:
                    raise OrbError(
                        400, "400-request-validation-errors", "The backfill cannot be reverted"
                    )
                backfill["reverted_at"] = now
                return Answer(200, self._public_backfill(backfill))
            case "PUT", ["events", key, "deprecate"]:
                event = self.keys.get(key)
                if event is None:
                    raise OrbError(404, "404-resource-not-found", "Event not found")
                event.deprecated = True
                return Answer(200, {"deprecated": key})
        raise OrbError(404, "404-url-not-found", f"No route {method} {path}")

    # --- customers, metrics ------------------------------------------------------------------

    def _customer_by_external(self, external_id: str) -> dict:
        for customer in self.customers.values():
            if customer["external_customer_id"] == external_id:
                return customer
        raise OrbError(404, "404-resource-not-found", "Customer not found")

    def _create_customer(self, body: dict) -> Answer:
        if not body.get("name") or not body.get("email"):
            raise OrbError(
                400,
                "400-request-validation-errors",
                "name and email are required",
                validation_errors=["name and email are required"],
            )
        external = body.get("external_customer_id")
        if external and any(c["external_customer_id"] == external for c in self.customers.values()):
            raise OrbError(
                400,
                "400-duplicate-resource-creation",
                f"A customer with external_customer_id {external} already exists",
            )
        customer = {
            "id": f"cus_{secrets.token_hex(6)}",
            "external_customer_id": external,
            "name": body["name"],
            "email": body["email"],
            "timezone": body.get("timezone") or "UTC",
            "balance": "0.00",
        }
        self.customers[customer["id"]] = customer
        return Answer(201, customer)

    def _balance(self, customer_id: str, body: dict) -> Answer:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise OrbError(404, "404-resource-not-found", "Customer not found")
        amount = Decimal(str(body.get("amount")))
        sign = 1 if body.get("type") == "increment" else -1
        customer["balance"] = plain(Decimal(customer["balance"]) + sign * amount)
        tx = {
            "id": f"cbt_{secrets.token_hex(6)}",
            "amount": plain(amount),
            "type": body.get("type"),
            "description": body.get("description"),
            "ending_balance": customer["balance"],
        }
        self.balance_transactions.append({**tx, "customer_id": customer_id})
        return Answer(201, tx)

    def _create_metric(self, body: dict) -> Answer:
        match = SQL.match(body.get("sql") or "")
        if not match or body.get("item_id") not in self.items:
            raise OrbError(
                400,
                "400-request-validation-errors",
                "Invalid metric",
                validation_errors=["sql or item_id invalid"],
            )
        metric = {
            "id": f"bm_{secrets.token_hex(6)}",
            "name": body.get("name", ""),
            "description": body.get("description"),
            "item_id": body["item_id"],
            "metadata": body.get("metadata") or {},
            "sql": body["sql"],
            "aggregate": match.group(1).split("(")[0].lower(),
            "event_name": match.group(2),
            "off": False,
        }
        self.metrics[metric["id"]] = metric
        return Answer(201, self._public_metric(metric))

    @staticmethod
    def _public_metric(metric: dict) -> dict:
        return {k: metric[k] for k in ("id", "name", "description", "metadata")} | {
            "item": {"id": metric["item_id"]},
            "status": "active",
        }

    def _page(self, items: list, query: dict) -> Answer:
        start = int(query.get("cursor") or 0)
        limit = int(query.get("limit") or 20)
        chunk = items[start : start + limit]
        more = start + limit < len(items)
        return Answer(
            200,
            {
                "data": chunk,
                "pagination_metadata": {
                    "has_more": more,
                    "next_cursor": str(start + limit) if more else None,
                },
            },
        )

    # --- ingest ------------------------------------------------------------------------------

    # --- backfills ----------------------------------------------------------------------------

    def _backfill(self, bid: str) -> dict:
        backfill = self.backfills.get(bid)
        if backfill is None:
            raise OrbError(404, "404-resource-not-found", "Backfill not found")
        return backfill

    def _create_backfill(self, body: dict) -> Answer:
        now = self.now()
        try:
            start, end = _ts(body["timeframe_start"]), _ts(body["timeframe_end"])
        except (KeyError, ValueError, AttributeError):
            raise OrbError(
                400,
                "400-request-validation-errors",
                "timeframe_start and timeframe_end are required",
                validation_errors=["timeframe"],
            ) from None
        problems = []
        if not start < end:
            problems.append("timeframe_start must be before timeframe_end")
        if end - start > 31 * DAY:
            problems.append("Backfills may span at most 31 days")
        if not body.get("deprecation_filter") and end > now - self.grace_seconds:
            problems.append("timeframe_end may not be later than the grace period boundary")
        if problems:
            raise OrbError(
                400, "400-request-validation-errors", problems[0], validation_errors=problems
            )
        customer = None
        if body.get("customer_id"):
            customer = self.customers.get(body["customer_id"])
            if customer is None:
                raise OrbError(404, "404-resource-not-found", "Customer not found")
        elif body.get("external_customer_id"):
            customer = self._customer_by_external(body["external_customer_id"])
        for other in self.backfills.values():
            if (
                other["status"] in ("pending", "pending_revert")
                and (customer is None or other["customer_id"] in (None, customer["id"]))
                and other["timeframe_start"] < end
                and start < other["timeframe_end"]
            ):
                raise OrbError(
                    400,
                    "400-request-validation-errors",
                    f"The timeframe overlaps backfill {other['id']}, which is {other['status']}",
                    validation_errors=["overlapping backfill"],
                )
        close_time = _ts(body["close_time"]) if body.get("close_time") else now + DAY
        backfill = {
            "id": f"bf_{secrets.token_hex(6)}",
            "status": "pending",
            "created_at": now,
            "timeframe_start": start,
            "timeframe_end": end,
            "close_time": close_time,
            "customer_id": customer["id"] if customer else None,
            "external": customer["external_customer_id"] if customer else None,
            "replace_existing_events": bool(body.get("replace_existing_events", True)),
            "deprecation_filter": body.get("deprecation_filter"),
            "reverted_at": None,
            "events_ingested": 0,
        }
        self.backfills[backfill["id"]] = backfill
        return Answer(201, self._public_backfill(backfill))

    @staticmethod
    def _public_backfill(backfill: dict) -> dict:
        return {
            "id": backfill["id"],
            "status": backfill["status"],
            "created_at": _iso(backfill["created_at"]),
            "timeframe_start": _iso(backfill["timeframe_start"]),
            "timeframe_end": _iso(backfill["timeframe_end"]),
            "close_time": _iso(backfill["close_time"]),
            "customer_id": backfill["customer_id"],
            "replace_existing_events": backfill["replace_existing_events"],
            "deprecation_filter": backfill["deprecation_filter"],
            "reverted_at": _iso(backfill["reverted_at"]) if backfill["reverted_at"] else None,
            "events_ingested": backfill["events_ingested"],
        }

    def _validate_backfilled(self, event: dict, now: float, backfill: dict) -> list[str]:
        """A backfill's event: of any age, inside the backfill's timeframe and scope."""
        errors = [e for e in self._validate(event, now) if "grace period" not in e]
        try:
            ts = _ts(event.get("timestamp") or "")
        except ValueError:
            return errors
        if not backfill["timeframe_start"] <= ts < backfill["timeframe_end"]:
            errors.append("timestamp is outside the timeframe of the backfill")
        customer = event.get("external_customer_id") or event.get("customer_id")
        if backfill["external"] is not None and customer not in (
            backfill["external"],
            backfill["customer_id"],
        ):
            errors.append("the event's customer is outside the scope of the backfill")
        return errors

    def _validate(self, event: dict, now: float) -> list[str]:
        errors = []
        if bool(event.get("customer_id")) == bool(event.get("external_customer_id")):
            errors.append("Exactly one of customer_id and external_customer_id must be specified")
        elif event.get("customer_id") and event["customer_id"] not in self.customers:
            errors.append(f"Customer {event['customer_id']} does not exist")
        if not event.get("event_name") or not event.get("idempotency_key"):
            errors.append("event_name and idempotency_key are required")
        try:
            ts = _ts(event.get("timestamp") or "")
        except ValueError:
            errors.append("timestamp must conform to ISO 8601")
        else:
            if ts < now - self.grace_seconds:
                errors.append("timestamp is older than the grace period of the account")
            if ts > now + FUTURE_WINDOW:
                errors.append("timestamp is more than 5 minutes in the future")
        properties = event.get("properties")
        if not isinstance(properties, dict) or any(
            isinstance(v, dict | list) or v is None for v in properties.values()
        ):
            errors.append("properties must be a flat dictionary of numbers, strings or booleans")
        return errors

    def _ingest(self, body: dict, query: dict) -> Answer:
        now = self.now()
        events = body.get("events")
        if not isinstance(events, list):
            raise OrbError(
                400,
                "400-request-validation-errors",
                "events is required",
                validation_errors=["events is required"],
            )
        seen: dict[str, str] = {}
        for event in events:
            text = json.dumps(event, sort_keys=True, default=str)
            key = event.get("idempotency_key", "")
            if key in seen and seen[key] != text:
                raise OrbError(
                    400,
                    "400-request-validation-errors",
                    "Duplicate idempotency keys with differing bodies in one batch",
                    validation_errors=[f"idempotency_key {key} repeated with a different body"],
                )
            seen[key] = text
        backfill = None
        if query.get("backfill_id"):
            backfill = self._backfill(query["backfill_id"])
            if backfill["status"] != "pending" or backfill["close_time"] <= now:
                raise OrbError(
                    400,
                    "400-request-validation-errors",
                    f"Backfill {backfill['id']} is closed: it accepts no more events",
                    validation_errors=["backfill closed"],
                )
        failed = [
            {"idempotency_key": e.get("idempotency_key", ""), "validation_errors": errs}
            for e in events
            if (
                errs := self._validate(e, now)
                if backfill is None
                else self._validate_backfilled(e, now, backfill)
            )
        ]
        if failed:
            raise OrbError(
                400,
                "400-request-validation-errors",
                "Event validation failed",
                validation_errors=[m for f in failed for m in f["validation_errors"]],
                validation_failed=failed,
            )
        duplicate, ingested = [], []
        for event in events:
            key = event["idempotency_key"]
            if key in self.keys:
                duplicate.append(key)
                continue
            row = OrbEvent(
                idempotency_key=key,
                customer=event.get("external_customer_id") or event["customer_id"],
                event_name=event["event_name"],
                timestamp=_ts(event["timestamp"]),
                properties=dict(event["properties"]),
                received=now,
                backfill_id=backfill["id"] if backfill else "",
            )
            if backfill is not None:
                backfill["events_ingested"] += 1
            self.events.append(row)
            self.keys[key] = row
            ingested.append(key)
        answer = {"validation_failed": []}
        if query.get("debug") in ("true", "True", "1"):
            answer["debug"] = {"duplicate": duplicate, "ingested": ingested}
        return Answer(200, answer)

    # --- reads -------------------------------------------------------------------------------

    def _subscriptions(self, query: dict) -> Answer:
        wanted = {v for k, v in query.items() if k.startswith("external_customer_id")}
        subs = [
            {
                "id": s["id"],
                "status": s["status"],
                "customer": {"external_customer_id": s["external_customer_id"]},
            }
            for s in sorted(self.subscriptions.values(), key=lambda s: -s["created_at"])
            if not wanted or s["external_customer_id"] in wanted
        ]
        return self._page(subs, query)

    def quantity(self, metric: dict, customer: str, lo: float, hi: float) -> Decimal:
        rows = [
            e
            for e in self.counted(event_name=metric["event_name"], customer=customer)
            if lo <= e.timestamp < hi
        ]
        if metric["aggregate"] == "count":
            return Decimal(len(rows))
        if metric["aggregate"] == "max":
            return max((e.value for e in rows), default=Decimal(0))
        if metric["aggregate"] == "latest_by":
            # LATEST_BY(value, timestamp): the value of the latest event (ties: the last in).
            latest = max(rows, key=lambda e: (e.timestamp, e.received), default=None)
            return latest.value if latest else Decimal(0)
        return sum((e.value for e in rows), Decimal(0))

    def _usage(self, sid: str, query: dict) -> Answer:
        sub = self.subscriptions.get(sid)
        if sub is None:
            raise OrbError(404, "404-resource-not-found", "Subscription not found")
        start_text, end_text = query.get("timeframe_start"), query.get("timeframe_end")
        if bool(start_text) != bool(end_text):
            raise OrbError(
                400,
                "400-request-validation-errors",
                "Both timeframe_start and timeframe_end must be specified",
                validation_errors=["timeframe"],
            )
        lo = _ts(start_text) if start_text else sub["period_start"]
        hi = _ts(end_text) if end_text else sub["period_end"]
        windows = [(lo, hi)]
        if query.get("granularity") == "day":
            windows, at = [], lo
            while at < hi:
                nxt = min(hi, at - (at % DAY) + DAY)  # the customer's (UTC) midnight
                windows.append((at, nxt))
                at = nxt
        customer = sub["external_customer_id"]
        data = [
            {
                "billable_metric": {"id": m["id"], "name": m["name"]},
                "usage": [
                    {
                        "quantity": self.quantity(m, customer, a, b),
                        "timeframe_start": _iso(a),
                        "timeframe_end": _iso(b),
                    }
                    for a, b in windows
                ],
                "view_mode": "periodic",
            }
            for m in self.metrics.values()
        ]
        return Answer(200, {"data": data})

    def _invoices(self, query: dict) -> Answer:
        external = query.get("external_customer_id")
        since = query.get("invoice_date_gte")
        rows = [
            i
            for i in sorted(self.invoices, key=lambda i: i["invoice_date"], reverse=True)
            if (not external or i["customer"]["external_customer_id"] == external)
            and (not since or _ts(i["invoice_date"]) >= _ts(since))
        ]
        return self._page(rows, query)

    def _upcoming(self, query: dict) -> Answer:
        sub = self.subscriptions.get(query.get("subscription_id") or "")
        if sub is None:
            raise OrbError(404, "404-resource-not-found", "Subscription not found")
        lines = []
        for metric_id, price in sub["unit_prices"].items():
            metric = self.metrics[metric_id]
            quantity = self.quantity(
                metric, sub["external_customer_id"], sub["period_start"], sub["period_end"]
            )
            lines.append(
                self._line(
                    metric_id,
                    quantity,
                    quantity * Decimal(str(price)),
                    sub["period_start"],
                    sub["period_end"],
                )
            )
        total = sum((Decimal(li["amount"]) for li in lines), Decimal(0))
        return Answer(
            200,
            {
                "id": None,
                "status": "draft",
                "currency": "USD",
                "invoice_number": "",
                "customer": {"external_customer_id": sub["external_customer_id"]},
                "invoice_date": _iso(sub["period_end"]),
                "due_date": _iso(sub["period_end"]),
                "target_date": _iso(sub["period_end"]),
                "total": plain(total),
                "line_items": lines,
            },
        )


def hours_ago(n: float) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=n)).replace(microsecond=0)
