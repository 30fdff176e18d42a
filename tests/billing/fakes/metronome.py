"""A stateful fake of the parts of Metronome Meterops talks to, served over real HTTP.

Written from Metronome's API reference (the docstrings of the official `metronome-sdk`, which
the adapter drives against it through METRONOME_API_BASE = the fake's root). It enforces what
Metronome documents:

- `Authorization: Bearer <token>` on every request (401 otherwise);
- `POST /v1/ingest`: a list of 1 to 100 events `{transaction_id, customer_id, event_type,
  timestamp, properties}` (more, fewer or a malformed one: 400 and nothing is taken);
  `customer_id` is a customer id or an ingest alias; "Metronome maintains a 34-day
  deduplication window" on `transaction_id` (`dedupe_seconds`): a repeat inside it is dropped
  silently, after it counted again; the answer is 200 with no body either way;
- rate limits: the next few requests (`fail_next`) answer 429 with Retry-After;
- customers (`POST /v1/customers`, a second with a taken ingest alias: 409), listed by
  `ingest_alias`; billable metrics (`POST /v1/billable-metrics/create`, `GET
  /v1/billable-metrics`) with an `event_type_filter` and `SUM`/`MAX` of `aggregation_key`;
- `POST /v1/usage`: bounds on UTC midnights (400 otherwise), `window_size` DAY (every day
  listed, empty ones with value null), HOUR or NONE, per customer id and billable metric,
  cursor-paged by `next_page`;
- invoices (made by tests with `create_invoice`, FINALIZED or DRAFT): `GET
  /v1/customers/{id}/invoices` (filter `status`); a DRAFT invoice draws down the customer's
  credit grants effective in its period (priority order) as `invoice_adjustments` with the
  grant's id and a negative total, and its `total` is net of them;
- pricing units `GET /v1/credit-types/list` (the fiat ones: USD (cents) with its documented
  id, EUR (cents), JPY);
- credit grants `POST /v1/credits/createGrant` (customer_id, name, grant_amount,
  paid_amount, priority and expires_at required: 400 otherwise; an unknown customer or
  pricing unit: 400; a `uniqueness_key` already used: 409 and nothing made) and `POST
  /v1/credits/listGrants` (by `customer_ids`, voided grants left out, cursor-paged);
- `lose_next(path, count)`: the next requests to a path are carried out and their answer is
  lost (a 502), for retry tests.
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

from tests.billing.fake_stripe import Answer, _Handler

DAY = 86_400
DEDUPE_SECONDS = 34 * DAY
USD_CENTS = "2714e483-4ff1-48e4-9e25-ac732e8f24f2"
PRICING_UNITS = [
    {"id": USD_CENTS, "name": "USD (cents)", "is_currency": True},
    {"id": "5ae401dc-a648-4b49-9ac3-391bb5bc4d7b", "name": "EUR (cents)", "is_currency": True},
    {"id": "1d5b4a35-5e4e-4b8a-8c87-b4f3b2b0e1a9", "name": "JPY", "is_currency": True},
    {"id": "9f1b2c3d-0000-4000-8000-00000000c0de", "name": "AI credits", "is_currency": False},
]


@dataclass
class MetronomeEvent:
    transaction_id: str
    customer: str  # the Metronome customer id
    event_type: str
    timestamp: float
    properties: dict
    received: float

    @property
    def value(self) -> Decimal:
        return Decimal(str(self.properties.get("value", 0)))


class MetronomeError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.answer = Answer(status, {"message": message})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _ts(text: str) -> float:
    at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


class FakeMetronome:
    def __init__(self, *, api_key: str = "metronome_test_fake") -> None:
        self.api_key = api_key
        self.retry_after = "0"
        self.dedupe_seconds = DEDUPE_SECONDS
        self.lock = threading.RLock()
        self.customers: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}
        self.events: list[MetronomeEvent] = []
        self.seen: dict[str, float] = {}  # transaction_id -> when first taken
        self.invoices: list[dict] = []
        self.grants: list[dict] = []
        self.requests: list[dict] = []
        self.forced: deque[int] = deque()
        self.lost: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def request_count(self) -> int:
        return len(self.requests)

    # --- test controls -----------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429) -> None:
        with self.lock:
            self.forced.extend([status] * count)

    def lose_next(self, path: str, count: int = 1) -> None:
        """Carry out the next `count` requests to `path` and lose their answers (502)."""
        with self.lock:
            self.lost[path] = self.lost.get(path, 0) + count

    def grants_of(self, alias: str) -> list[dict]:
        customer = self.customer_by_alias(alias)
        return [g for g in self.grants if customer and g["customer_id"] == customer["id"]]

    def calls(self, path_prefix: str = "", method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method)
        ]

    def customer_by_alias(self, alias: str) -> dict | None:
        return next((c for c in self.customers.values() if alias in c["ingest_aliases"]), None)

    def total(self, *, event_type: str, alias: str) -> Decimal:
        customer = self.customer_by_alias(alias)
        return sum(
            (
                e.value
                for e in self.events
                if customer and e.customer == customer["id"] and e.event_type == event_type
            ),
            Decimal(0),
        )

    def count_key(self, transaction_id: str) -> int:
        return sum(1 for e in self.events if e.transaction_id == transaction_id)

    def create_invoice(
        self,
        *,
        alias: str,
        lines: list[tuple[str, Decimal, int]],
        status: str = "FINALIZED",
        start: float | None = None,
        end: float | None = None,
    ) -> dict:
        """An invoice: lines of (name, quantity, total in cents). FINALIZED (issued, over
        the 30 days before now by default) or DRAFT (the period holding now by default)."""
        with self.lock:
            now = time.time() + len(self.invoices)
            if status == "DRAFT" and start is None:
                start = now - now % DAY - 10 * DAY
                end = start + 30 * DAY
            start = now - 30 * DAY if start is None else start
            end = now if end is None else end
            customer = self.customer_by_alias(alias)
            invoice = {
                "id": f"inv_{secrets.token_hex(6)}",
                "customer_id": customer["id"],
                "type": "USAGE",
                "status": status,
                "credit_type": {"id": USD_CENTS, "name": "USD (cents)"},
                "start_timestamp": _iso(start),
                "end_timestamp": _iso(end),
                "issued_at": _iso(now) if status != "DRAFT" else None,
                "line_items": [
                    {
                        "name": name,
                        "type": "usage",
                        "quantity": quantity,
                        "total": cents,
                        "product_id": f"prod_{name}",
                        "credit_type": {"id": USD_CENTS, "name": "USD (cents)"},
                        "starting_at": _iso(start),
                        "ending_before": _iso(end),
                    }
                    for name, quantity, cents in lines
                ],
                "total": sum(c for _n, _q, c in lines),
            }
            self.invoices.append(invoice)
            return invoice

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> Answer:
        with self.lock:
            record = {"method": method, "path": path, "query": query, "body": raw}
            self.requests.append(record)
            if self.forced:
                status = self.forced.popleft()
                record["status"] = status
                answer = MetronomeError(status, "Too many requests").answer
                answer.headers["Retry-After"] = self.retry_after
                return answer
            try:
                if headers.get("Authorization") != f"Bearer {self.api_key}":
                    raise MetronomeError(401, "Unauthorized")
                answer = self._route(method, path, query, raw)
            except MetronomeError as exc:
                answer = exc.answer
            if self.lost.get(path):
                self.lost[path] -= 1
                record["done"] = answer.status
                answer = MetronomeError(502, "Bad Gateway").answer
            record["status"] = answer.status
            return answer

    def _route(self, method, path, query, raw) -> Answer:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        body = json.loads(raw, parse_float=Decimal) if raw else {}
        match method, parts:
            case "POST", ["v1", "ingest"]:
                return self._ingest(body)
            case "POST", ["v1", "customers"]:
                return self._create_customer(body)
            case "GET", ["v1", "customers"]:
                alias = query.get("ingest_alias")
                rows = [
                    c for c in self.customers.values() if not alias or alias in c["ingest_aliases"]
                ]
                return Answer(200, {"data": rows, "next_page": None})
            case "POST", ["v1", "billable-metrics", "create"]:
                return self._create_metric(body)
            case "GET", ["v1", "billable-metrics"]:
                return Answer(200, {"data": list(self.metrics.values()), "next_page": None})
            case "POST", ["v1", "usage"]:
                return self._usage(body, query)
            case "GET", ["v1", "customers", customer_id, "invoices"]:
                rows = [
                    self._render(i)
                    for i in reversed(self.invoices)
                    if i["customer_id"] == customer_id
                    and query.get("status") in (None, i["status"])
                ]
                return Answer(200, {"data": rows, "next_page": None})
            case "GET", ["v1", "credit-types", "list"]:
                return Answer(200, {"data": PRICING_UNITS, "next_page": None})
            case "POST", ["v1", "credits", "createGrant"]:
                return self._create_grant(body)
            case "POST", ["v1", "credits", "listGrants"]:
                return self._list_grants(body, query)
        raise MetronomeError(404, f"No route {method} {path}")

    def _ingest(self, events) -> Answer:
        if not isinstance(events, list) or not 1 <= len(events) <= 100:
            raise MetronomeError(400, "between 1 and 100 events per request")
        for event in events:
            missing = [
                k
                for k in ("transaction_id", "customer_id", "event_type", "timestamp")
                if not event.get(k)
            ]
            if missing:
                raise MetronomeError(400, f"missing {', '.join(missing)}")
        now = time.time()
        for event in events:
            txn = event["transaction_id"]
            first = self.seen.get(txn)
            if first is not None and now - first < self.dedupe_seconds:
                continue  # a duplicate inside the window: dropped silently
            self.seen[txn] = now
            customer = self.customers.get(event["customer_id"]) or self.customer_by_alias(
                event["customer_id"]
            )
            self.events.append(
                MetronomeEvent(
                    transaction_id=txn,
                    customer=customer["id"] if customer else event["customer_id"],
                    event_type=event["event_type"],
                    timestamp=_ts(event["timestamp"]),
                    properties=event.get("properties") or {},
                    received=now,
                )
            )
        return Answer(200, {})

    def _create_customer(self, body: dict) -> Answer:
        aliases = body.get("ingest_aliases") or []
        if any(self.customer_by_alias(a) for a in aliases):
            raise MetronomeError(409, "ingest alias already in use")
        customer = {
            "id": f"cus-{secrets.token_hex(6)}",
            "name": body.get("name"),
            "external_id": body.get("external_id"),
            "ingest_aliases": aliases,
        }
        self.customers[customer["id"]] = customer
        return Answer(200, {"data": customer})

    def _create_metric(self, body: dict) -> Answer:
        if body.get("aggregation_type") not in ("SUM", "MAX", "COUNT", "LATEST", "UNIQUE"):
            raise MetronomeError(400, "aggregation_type invalid")
        metric = {
            "id": f"bm-{secrets.token_hex(6)}",
            "name": body.get("name"),
            "event_type_filter": body.get("event_type_filter") or {},
            "aggregation_type": body["aggregation_type"],
            "aggregation_key": body.get("aggregation_key"),
            "property_filters": body.get("property_filters") or [],
        }
        self.metrics[metric["id"]] = metric
        return Answer(200, {"data": {"id": metric["id"]}})

    def _aggregate(self, metric: dict, rows: list[MetronomeEvent]) -> Decimal | None:
        if not rows:
            return None
        values = [e.value for e in rows]
        return max(values) if metric["aggregation_type"] == "MAX" else sum(values, Decimal(0))

    def _usage(self, body: dict, query: dict) -> Answer:
        start, end = _ts(body["starting_on"]), _ts(body["ending_before"])
        if start % DAY or end % DAY or end - start < DAY:
            raise MetronomeError(400, "starting_on and ending_before must be UTC midnights")
        step = {"DAY": DAY, "HOUR": 3600, "NONE": end - start}[body["window_size"]]
        wanted = [m["id"] for m in body.get("billable_metrics") or []] or list(self.metrics)
        customers = body.get("customer_ids") or list(self.customers)
        data = []
        for customer in customers:
            for metric_id in wanted:
                metric = self.metrics[metric_id]
                names = metric["event_type_filter"].get("in_values") or []
                at = start
                while at < end:
                    rows = [
                        e
                        for e in self.events
                        if e.customer == customer
                        and e.event_type in names
                        and at <= e.timestamp < at + step
                    ]
                    value = self._aggregate(metric, rows)
                    data.append(
                        {
                            "customer_id": customer,
                            "billable_metric_id": metric_id,
                            "billable_metric_name": metric["name"],
                            "start_timestamp": _iso(at),
                            "end_timestamp": _iso(at + step),
                            "value": value,
                        }
                    )
                    at += step
        offset = int(query.get("next_page") or 0)
        chunk = data[offset : offset + 100]
        more = offset + 100 < len(data)
        return Answer(200, {"data": chunk, "next_page": str(offset + 100) if more else None})

    # --- credit grants --------------------------------------------------------------------------

    def _create_grant(self, body: dict) -> Answer:
        required = ("customer_id", "name", "grant_amount", "paid_amount", "priority", "expires_at")
        missing = [k for k in required if body.get(k) in (None, "")]
        if missing:
            raise MetronomeError(400, f"missing {', '.join(missing)}")
        if body["customer_id"] not in self.customers:
            raise MetronomeError(400, "customer not found")
        units = {u["id"]: u for u in PRICING_UNITS}
        amounts = {}
        for field in ("grant_amount", "paid_amount"):
            value = body[field]
            unit = units.get(value.get("credit_type_id") or USD_CENTS)
            if unit is None:
                raise MetronomeError(400, f"{field}: unknown credit type")
            amounts[field] = {
                "amount": value.get("amount"),
                "credit_type": {"id": unit["id"], "name": unit["name"]},
            }
        key = body.get("uniqueness_key")
        if key and any(g["uniqueness_key"] == key for g in self.grants):
            raise MetronomeError(409, "A credit grant with this uniqueness key already exists")
        effective = body.get("effective_at") or _iso(time.time())
        if _ts(body["expires_at"]) <= _ts(effective):
            raise MetronomeError(400, "expires_at must be after effective_at")
        grant = {
            "id": f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-grant",
            "customer_id": body["customer_id"],
            "name": body["name"],
            "reason": body.get("reason"),
            "priority": body["priority"],
            "effective_at": _iso(_ts(effective)),
            "expires_at": _iso(_ts(body["expires_at"])),
            "credit_grant_type": body.get("credit_grant_type"),
            "custom_fields": body.get("custom_fields") or {},
            "uniqueness_key": key,
            "invoice_id": None,
            "products": [],
            "deductions": [],
            "pending_deductions": [],
            "voided": False,
            **amounts,
        }
        self.grants.append(grant)
        return Answer(200, {"data": {"id": grant["id"]}})

    def _public_grant(self, grant: dict) -> dict:
        amount = grant["grant_amount"]["amount"]
        return {
            **{k: v for k, v in grant.items() if k != "voided"},
            "balance": {
                "effective_at": grant["expires_at"],
                "excluding_pending": amount,
                "including_pending": amount - self._drawn(grant),
            },
        }

    def _list_grants(self, body: dict, query: dict) -> Answer:
        customers = body.get("customer_ids")
        rows = [
            self._public_grant(g)
            for g in self.grants
            if not g["voided"] and (not customers or g["customer_id"] in customers)
        ]
        offset = int(query.get("next_page") or 0)
        limit = int(query.get("limit") or 25)
        more = offset + limit < len(rows)
        return Answer(
            200,
            {
                "data": rows[offset : offset + limit],
                "next_page": str(offset + limit) if more else None,
            },
        )

    def _applicable(self, invoice: dict) -> list[dict]:
        start, end = _ts(invoice["start_timestamp"]), _ts(invoice["end_timestamp"])
        return sorted(
            (
                g
                for g in self.grants
                if g["customer_id"] == invoice["customer_id"]
                and not g["voided"]
                and _ts(g["effective_at"]) < end
                and _ts(g["expires_at"]) > start
                and g["grant_amount"]["credit_type"]["id"] == invoice["credit_type"]["id"]
            ),
            key=lambda g: (g["priority"], g["effective_at"]),
        )

    def _draws(self, invoice: dict) -> list[tuple[dict, int]]:
        left = sum(line["total"] for line in invoice["line_items"])
        draws = []
        for grant in self._applicable(invoice):
            take = min(int(grant["grant_amount"]["amount"]), left)
            if take > 0:
                draws.append((grant, take))
                left -= take
        return draws

    def _drawn(self, grant: dict) -> int:
        return sum(
            take
            for invoice in self.invoices
            if invoice["status"] == "DRAFT"
            for g, take in self._draws(invoice)
            if g is grant
        )

    def _render(self, invoice: dict) -> dict:
        """A DRAFT invoice as Metronome shows it now: credit grants drawn down."""
        if invoice["status"] != "DRAFT":
            return invoice
        adjustments = [
            {
                "name": grant["name"],
                "total": -take,
                "credit_type": invoice["credit_type"],
                "credit_grant_id": grant["id"],
                "credit_grant_custom_fields": grant["custom_fields"],
            }
            for grant, take in self._draws(invoice)
        ]
        subtotal = sum(line["total"] for line in invoice["line_items"])
        return {
            **invoice,
            "invoice_adjustments": adjustments,
            "subtotal": subtotal,
            "total": subtotal + sum(a["total"] for a in adjustments),
        }
