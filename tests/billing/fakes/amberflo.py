"""A stateful fake of the parts of Amberflo Meterops talks to, served over real HTTP.

Written from Amberflo's API reference (docs.amberflo.io) and its official SDKs' source
(amberflo/metering-python, metering-go), reached by the adapter through AMBERFLO_BASE_URL =
the fake's root. It enforces what Amberflo documents:

- `X-API-KEY: <api key>` on every request (401 otherwise);
- `POST /ingest`: a list of meter records `{uniqueId, customerId, meterApiName, meterValue,
  meterTimeInMillis, dimensions}` (customerId, meterApiName and meterTimeInMillis required,
  meterValue a number: else 400 and nothing is taken); the answer is 200 with
  "N records were ingested" whether or not a record was a repeat. "It discards duplicate
  meter events unless any attribute (e.g. timestamp, dimension) differs": a record equal to
  one already taken (every field) is dropped; with any field different it counts. How long
  Amberflo remembers is not documented: `dedupe_seconds` None (the default) keeps them for
  good. No past limit on timestamps ("backfill as many meter events as you like");
- rate limits: the next few requests (`fail_next`) answer 429 with Retry-After;
- customers (`GET /customers?customerId=`: the customer, or `{}`; `GET /customers`: all;
  `POST /customers` creates); meters (`GET /meters`, `POST /meters` with a `meterType` among
  sum_of_all_usage, max_usage, running_total, event_duration, unique_count);
- `POST /usage`: `aggregation` SUM, COUNT, MIN or MAX, `timeGroupingInterval` HOUR, DAY (UTC
  midnights), WEEK or MONTH, `timeRange` (end defaults to now), `filter` and `groupBy` on
  customerId; every bucket listed, empty ones 0 (the gap-filling endpoint);
- invoices (made by tests with `create_invoice`): `GET
  /payments/billing/customer-product-invoice/all?customerId=&productId=`, and `GET
  /payments/billing/customer-product-invoice?latest=true` (the running period's invoice, or
  `{}`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import ThreadingHTTPServer

from tests.billing.fake_stripe import Answer, _Handler

DAY = 86_400
METER_TYPES = {"sum_of_all_usage", "max_usage", "running_total", "event_duration", "unique_count"}
STEPS = {"HOUR": 3600, "DAY": DAY, "WEEK": 7 * DAY}


@dataclass
class AmberfloRecord:
    unique_id: str
    customer: str
    meter: str
    value: Decimal
    timestamp: float  # seconds (meterTimeInMillis / 1000)
    dimensions: dict = field(default_factory=dict)
    received: float = 0.0

    @property
    def identity(self) -> tuple:
        """Every attribute: a record equal in all of them is a duplicate."""
        return (
            self.unique_id,
            self.customer,
            self.meter,
            self.value,
            round(self.timestamp * 1000),
            tuple(sorted(self.dimensions.items())),
        )


class AmberfloError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.answer = Answer(status, {"message": message})


class FakeAmberflo:
    def __init__(self, *, api_key: str = "amberflo_test_fake") -> None:
        self.api_key = api_key
        self.retry_after = "0"
        self.dedupe_seconds: float | None = None
        self.lock = threading.RLock()
        self.customers: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.events: list[AmberfloRecord] = []
        self.seen: dict[tuple, float] = {}  # record identity -> when first taken
        self.invoices: list[dict] = []
        self.requests: list[dict] = []
        self.forced: deque[tuple[int, str]] = deque()
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

    def fail_next(self, count: int, status: int = 429, path: str = "") -> None:
        """The next `count` requests (to paths starting with `path`) answer `status`."""
        with self.lock:
            self.forced.extend([(status, path)] * count)

    def calls(self, path_prefix: str = "", method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.requests
            if r["path"].startswith(path_prefix) and (method is None or r["method"] == method)
        ]

    def total(self, *, meter: str, customer: str) -> Decimal:
        return sum(
            (e.value for e in self.events if e.meter == meter and e.customer == customer),
            Decimal(0),
        )

    def count_key(self, unique_id: str) -> int:
        return sum(1 for e in self.events if e.unique_id == unique_id)

    def create_invoice(
        self,
        *,
        customer: str,
        lines: list[tuple[str, Decimal, Decimal]],
        start: float | None = None,
        end: float | None = None,
    ) -> dict:
        """An invoice of the customer's plan: lines of (meterApiName, units, price in
        dollars); by default a period that ended a moment ago."""
        with self.lock:
            end = end if end is not None else time.time() - 60 - len(self.invoices)
            start = start if start is not None else end - 30 * DAY
            day = datetime.fromtimestamp(start, UTC)
            items = [
                {
                    "productItemId": f"item-{meter}",
                    "productItemName": meter.removeprefix("mo_").title(),
                    "meterApiName": meter,
                    "totalBill": {
                        "meterUnits": units,
                        "price": price,
                        "startTimeInSeconds": int(start),
                        "endTimeInSeconds": int(end),
                    },
                }
                for meter, units, price in lines
            ]
            total = sum((p for _m, _u, p in lines), Decimal(0))
            invoice = {
                "invoiceUri": f"{customer}/plan-1/{day:%Y/%m/%d}/{secrets.token_hex(4)}",
                "invoiceKey": {
                    "customerId": customer,
                    "productId": "1",
                    "productPlanId": "plan-1",
                    "year": day.year,
                    "month": day.month,
                    "day": day.day,
                },
                "planName": "Usage",
                "invoiceStartTimeInSeconds": int(start),
                "invoiceEndTimeInSeconds": int(end),
                "productItemInvoices": items,
                "totalBill": {"itemPrice": total, "fixPrice": 0, "totalPrice": total},
                "invoicePriceStatus": "PRICE_LOCKED" if end <= time.time() else "OPEN",
                "paymentStatus": "PENDING" if end <= time.time() else "PRE_PAYMENT",
            }
            self.invoices.append(invoice)
            return invoice

    # --- request handling ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, headers, raw: bytes) -> Answer:
        with self.lock:
            record = {"method": method, "path": path, "query": query, "body": raw}
            self.requests.append(record)
            if self.forced and path.startswith(self.forced[0][1]):
                status, _path = self.forced.popleft()
                record["status"] = status
                message = "Too Many Requests" if status == 429 else "Bad Request"
                answer = AmberfloError(status, message).answer
                answer.headers["Retry-After"] = self.retry_after
                return answer
            try:
                if headers.get("X-API-KEY") != self.api_key:
                    raise AmberfloError(401, "Unauthorized")
                answer = self._route(method, path.strip("/"), query, raw)
            except AmberfloError as exc:
                answer = exc.answer
            record["status"] = answer.status
            return answer

    def _route(self, method, path, query, raw) -> Answer:
        try:
            body = json.loads(raw, parse_float=Decimal) if raw else {}
        except ValueError as exc:
            raise AmberfloError(400, "malformed JSON") from exc
        invoices = "payments/billing/customer-product-invoice"
        match method, path:
            case "POST", "ingest":
                return self._ingest(body)
            case "GET", "customers":
                if "customerId" in query:
                    return Answer(200, self.customers.get(query["customerId"], {}))
                return Answer(200, list(self.customers.values()))
            case "POST", "customers":
                return self._create_customer(body)
            case "GET", "meters":
                return Answer(200, list(self.meters.values()))
            case "POST", "meters":
                return self._create_meter(body)
            case "POST", "usage":
                return self._usage(body)
            case "GET", p if p == f"{invoices}/all":
                rows = [
                    i
                    for i in self.invoices
                    if i["invoiceKey"]["customerId"] == query.get("customerId")
                ]
                return Answer(200, rows)
            case "GET", p if p == invoices:
                if query.get("latest") != "true":
                    raise AmberfloError(400, "productPlanId, year, month and day, or latest")
                now = time.time()
                running = [
                    i
                    for i in self.invoices
                    if i["invoiceKey"]["customerId"] == query.get("customerId")
                    and i["invoiceStartTimeInSeconds"] <= now < i["invoiceEndTimeInSeconds"]
                ]
                return Answer(200, running[-1] if running else {})
        raise AmberfloError(404, f"No route {method} /{path}")

    def _ingest(self, records) -> Answer:
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise AmberfloError(400, "a meter record or a list of them")
        parsed = []
        for n, rec in enumerate(records):
            missing = [
                k for k in ("customerId", "meterApiName", "meterTimeInMillis") if not rec.get(k)
            ]
            value = rec.get("meterValue")
            if missing or isinstance(value, bool) or not isinstance(value, (int, Decimal)):
                raise AmberfloError(
                    400, f"record {n}: missing {missing} or meterValue not a number"
                )
            parsed.append(
                AmberfloRecord(
                    unique_id=str(rec.get("uniqueId") or secrets.token_hex(8)),
                    customer=rec["customerId"],
                    meter=rec["meterApiName"],
                    value=Decimal(value),
                    timestamp=int(rec["meterTimeInMillis"]) / 1000,
                    dimensions=rec.get("dimensions") or {},
                )
            )
        now = time.time()
        for event in parsed:
            first = self.seen.get(event.identity)
            if first is not None and (
                self.dedupe_seconds is None or now - first < self.dedupe_seconds
            ):
                continue  # a duplicate: dropped, and the answer does not say so
            self.seen[event.identity] = now
            event.received = now
            self.events.append(event)
        return Answer(200, f"{len(parsed)} records were ingested")

    def _create_customer(self, body: dict) -> Answer:
        customer_id = body.get("customerId")
        if not customer_id or not body.get("customerName"):
            raise AmberfloError(400, "customerId and customerName are required")
        customer = {
            "id": secrets.token_hex(8),
            "customerId": customer_id,
            "customerName": body["customerName"],
            "traits": body.get("traits") or {},
            "enabled": True,
            "createTime": int(time.time() * 1000),
        }
        self.customers[customer_id] = customer
        return Answer(200, customer)

    def _create_meter(self, body: dict) -> Answer:
        name = body.get("meterApiName")
        if not name or not body.get("label") or body.get("meterType") not in METER_TYPES:
            raise AmberfloError(400, "meterApiName, label and a valid meterType are required")
        if name in self.meters:
            raise AmberfloError(400, f"meter {name} already exists")
        meter = {
            "id": secrets.token_hex(8),
            "meterApiName": name,
            "label": body["label"],
            "meterType": body["meterType"],
            "dimensions": body.get("dimensions") or [],
            "createTime": int(time.time() * 1000),
        }
        self.meters[name] = meter
        return Answer(200, meter)

    @staticmethod
    def _buckets(start: float, end: float, interval: str) -> list[tuple[float, float]]:
        """Buckets aligned to UTC (days at midnight, months on the 1st) covering [start, end)."""
        out = []
        if interval == "MONTH":
            at = datetime.fromtimestamp(start, UTC).replace(day=1, hour=0, minute=0, second=0)
            while at.timestamp() < end:
                nxt = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
                out.append((at.timestamp(), nxt.timestamp()))
                at = nxt
            return out
        step = STEPS[interval]
        at = start - (start % step if interval != "WEEK" else (start + 3 * DAY) % step)
        while at < end:
            out.append((at, at + step))
            at += step
        return out

    def _usage(self, body: dict) -> Answer:
        meter = body.get("meterApiName")
        interval = body.get("timeGroupingInterval")
        aggregation = body.get("aggregation", "SUM")
        time_range = body.get("timeRange") or {}
        if meter not in self.meters:
            raise AmberfloError(400, f"unknown meterApiName {meter}")
        if interval not in (*STEPS, "MONTH") or aggregation not in ("SUM", "COUNT", "MIN", "MAX"):
            raise AmberfloError(400, "timeGroupingInterval or aggregation invalid")
        if not time_range.get("startTimeInSeconds"):
            raise AmberfloError(400, "timeRange.startTimeInSeconds is required")
        start = int(time_range["startTimeInSeconds"])
        end = int(time_range.get("endTimeInSeconds") or time.time())
        wanted = (body.get("filter") or {}).get("customerId")
        rows = [
            e
            for e in self.events
            if e.meter == meter
            and start <= e.timestamp < end
            and (not wanted or e.customer in wanted)
        ]
        by_customer = "customerId" in (body.get("groupBy") or [])
        groups: dict[str, list[AmberfloRecord]] = {}
        for event in rows:
            groups.setdefault(event.customer if by_customer else "", []).append(event)
        buckets = self._buckets(start, end, interval)
        client_meters = []
        for key, events in groups.items():
            values = []
            for lo, hi in buckets:
                inside = [e.value for e in events if lo <= e.timestamp < hi]
                values.append(
                    {"secondsSinceEpochUtc": int(lo), "value": self._aggregate(aggregation, inside)}
                )
            client_meters.append(
                {
                    "groupValue": self._aggregate(aggregation, [e.value for e in events]),
                    "group": {"groupInfo": {"customerId": key}} if by_customer else None,
                    "values": values,
                }
            )
        return Answer(
            200,
            {
                "metadata": body,
                "secondsSinceEpochIntervals": [int(lo) for lo, _hi in buckets],
                "clientMeters": client_meters,
            },
        )

    @staticmethod
    def _aggregate(aggregation: str, values: list[Decimal]) -> Decimal:
        if not values:
            return Decimal(0)
        match aggregation:
            case "COUNT":
                return Decimal(len(values))
            case "MIN":
                return min(values)
            case "MAX":
                return max(values)
        return sum(values, Decimal(0))
