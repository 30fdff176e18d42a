"""Benchmark: ingestion over HTTP (gunicorn) against PostgreSQL COPY of the same rows.

    uv run python bench/ingest.py                  # 500,000 events in 1,000-event batches
    uv run python bench/ingest.py --events 50000   # a quick run
    uv run python bench/ingest.py --workers 3 --clients 6 --batch 1000

It works in its own database (`meterops_bench_ingest` on the server of $DATABASE_URL, default
the local server), recreated at the start and kept afterwards for inspection. Steps:

1. migrate; create accounts, five meters (one per aggregation) and an `ingest` API key;
2. start gunicorn (config.wsgi:application, production settings: DEBUG off) on 127.0.0.1;
3. send every event once, as pre-encoded Lago batches from several client processes (the
   clients do little but send bytes and read the answer, so the CPU goes to the server), and
   sample the summed RSS of the gunicorn processes;
4. check that the stored count equals the sent count (and every item said `accepted`);
5. replay every batch and check that nothing new is stored (every item a `duplicate`);
6. stop gunicorn, read the stored rows back and load them with one psycopg COPY each, timed
   to its commit: first into a bare table of the same columns whose only index is the events'
   unique key (no other index, trigger or foreign key), then, after emptying it, into the event
   table itself (same indexes, same inbox trigger, same deferred foreign keys);
7. print events/s over HTTP and for both COPYs, the ratios HTTP / COPY into the event table
   (target >= 0.4) and HTTP / bare COPY (target >= 0.25), the CPU time per event of each (HTTP:
   gunicorn and its PostgreSQL backends, read from /proc, so the server must run on this
   machine; COPY: this process and its backend), batch latency p50/p99, the server's peak
   memory, and the load average (other work on the machine skews the rates: compare only
   figures printed by the same run; the CPU times are disturbed less); the HTTP CPU is also
   printed by side (gunicorn, PostgreSQL), and for the replay.

The HTTP path does strictly more than COPY: authentication, JSON parsing with exact decimals,
validation, a content hash per event, deduplication on the events' unique key, the per-item
answer.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402

ENDPOINTS = ["/v1/search", "/v1/embed", "/v1/chat", "/v1/files", "/v2/users", "/v2/orders"]
REGIONS = ["us-east", "us-west", "eu-west", "eu-central", "ap-south"]
# code, aggregation, value property, dimensions, share of events
METERS = [
    ("api_calls", "count", "", ["endpoint", "region"], 0.50),
    ("tokens", "sum", "tokens", ["model"], 0.25),
    ("peak_gb", "max", "gb", [], 0.10),
    ("seats", "latest", "seats", [], 0.05),
    ("active_users", "unique_count", "user", [], 0.10),
]
# The tables that event inserts fill (whichever exist in this version of the schema), emptied
# with the events before the COPY.
INBOXES = ("metering_rollupinbox", "metering_rolledupevent", "billing_pushinbox")
COLUMNS = (
    "account_id, meter_id, transaction_id, source, occurred_at, received_at, value, "
    "unique_value, properties, content_hash, is_late, kind"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="events to send (500,000)")
    parser.add_argument("--batch", type=int, default=1_000, help="events per request (1,000)")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers (3)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent client processes (6)")
    parser.add_argument("--accounts", type=int, default=500, help="accounts (500)")
    parser.add_argument("--database", default="meterops_bench_ingest")
    parser.add_argument("--no-replay", action="store_true", help="skip the replay phase")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# --- database ------------------------------------------------------------------------------------


def server_env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DEBUG": "false",
            "SECRET_KEY": "bench-" + "k" * 50,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "false",
            "DB_CONN_MAX_AGE": "600",
            "LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": env.get("CELERY_BROKER_URL") or "memory://",
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


SETUP = """
from metering.services.accounts import account_upsert, meter_upsert
from metering.services.api_keys import api_key_create
from metering.models import Account, Meter
for code, aggregation, prop, dims in {meters!r}:
    meter_upsert(code=code, name=code, aggregation=aggregation, value_property=prop,
                 dimensions=dims)
zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu"]
Account.objects.bulk_create(
    [Account(external_id=f"cust_{{i:05d}}", name=f"Customer {{i}}", timezone=zones[i % 5])
     for i in range({accounts})]
)
_key, raw = api_key_create(name="bench", scopes=["ingest"])
print(raw)
"""


def prepare(db_url: str, maintenance_url: str, args) -> str:
    database = urlparse(db_url).path.lstrip("/")
    log(f"recreating database {database}")
    recreate_database(database, maintenance_url)
    env = server_env(db_url)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True, cwd=ROOT)
    code = SETUP.format(meters=[m[:4] for m in METERS], accounts=args.accounts)
    out = subprocess.run(
        [*manage, "shell", "-c", code],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


# --- events --------------------------------------------------------------------------------------


def make_bodies(args, run_id: str) -> list[bytes]:
    """Lago batches, pre-encoded so the clients spend no CPU on them."""
    rng = random.Random(args.seed)
    now = time.time()
    codes = [m[0] for m in METERS]
    weights = [m[4] for m in METERS]
    bodies = []
    sent = 0
    while sent < args.events:
        size = min(args.batch, args.events - sent)
        events = []
        for i in range(sent, sent + size):
            code = rng.choices(codes, weights)[0]
            properties: dict = {
                "endpoint": rng.choice(ENDPOINTS),
                "region": rng.choice(REGIONS),
            }
            if code == "tokens":
                properties["tokens"] = f"{rng.randint(1, 50_000)}.{rng.randint(0, 99):02d}"
                properties["model"] = rng.choice(["small", "large"])
            elif code == "peak_gb":
                properties["gb"] = round(rng.uniform(0, 512), 3)
            elif code == "seats":
                properties["seats"] = rng.randint(1, 200)
            elif code == "active_users":
                properties["user"] = f"user_{rng.randint(1, 5000)}"
            events.append(
                {
                    "transaction_id": f"{run_id}-{i}",
                    "external_customer_id": f"cust_{rng.randrange(args.accounts):05d}",
                    "code": code,
                    # The last two days: a share of the events is late (before yesterday).
                    "timestamp": round(now - rng.uniform(0, 2 * 86400), 3),
                    "properties": properties,
                }
            )
        bodies.append(orjson.dumps({"events": events}))
        sent += size
    return bodies


# --- server --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db_url: str, workers: int, port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "120",
        "--backlog",
        "256",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, env=server_env(db_url), cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("gunicorn did not become healthy")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = (Path(f"/proc/{pid}/stat")).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pids(db_url: str) -> list[int]:
    """The PostgreSQL backends connected to the bench database (the server runs here)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def server_cpu(server_pid: int, db_url: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of gunicorn (master and workers) and of the database's backends."""
    return {
        "gunicorn": {pid: _cpu_seconds(pid) for pid in [server_pid, *_children(server_pid)]},
        "postgres": {pid: _cpu_seconds(pid) for pid in _backend_pids(db_url)},
    }


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict:
    """CPU seconds used between two `server_cpu` readings, by side."""
    return {
        side: sum(seconds - before[side].get(pid, 0.0) for pid, seconds in pids.items())
        for side, pids in after.items()
    }


class MemorySampler(threading.Thread):
    """Peak of the summed RSS of gunicorn's master and workers, sampled every 100 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        pids = [self.pid, *_children(self.pid)]
        last_scan = time.monotonic()
        while not self.stop.is_set():
            if time.monotonic() - last_scan > 2:  # workers may be restarted
                pids = [self.pid, *_children(self.pid)]
                last_scan = time.monotonic()
            self.peak = max(self.peak, sum(_rss_bytes(p) for p in pids))
            time.sleep(0.1)


# --- clients -------------------------------------------------------------------------------------


def client_run(port: int, key: str, bodies: list[bytes], out) -> None:
    """Send each body, keep (latency, counts); reconnect when the server closes."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    latencies, totals, failures = [], {}, 0
    for body in bodies:
        started = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/events/batch", body, headers)
            response = conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            failures += 1
            continue
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            failures += 1
            continue
        answer = orjson.loads(data)
        for k in ("accepted", "duplicates", "quarantined", "conflicts", "rejected"):
            totals[k] = totals.get(k, 0) + answer[k]
    conn.close()
    out.put((latencies, totals, failures))


def send_all(port: int, key: str, bodies: list[bytes], clients: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    shares = [bodies[i::clients] for i in range(clients)]
    started = time.perf_counter()
    procs = [ctx.Process(target=client_run, args=(port, key, share, queue)) for share in shares]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    latencies = sorted(lat for r in results for lat in r[0])
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r[1].items():
            totals[k] = totals.get(k, 0) + v
    return {
        "elapsed": elapsed,
        "latencies": latencies,
        "totals": totals,
        "failures": sum(r[2] for r in results),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- COPY ----------------------------------------------------------------------------------------


def stored_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM metering_usageevent").fetchone()[0]


def read_rows(db_url: str) -> list[tuple]:
    """The stored rows, as COPY wants them."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            f"SELECT {COLUMNS.replace('properties', 'properties::text')} "
            "FROM metering_usageevent ORDER BY id"
        ).fetchall()


def _timed_copy(conn: psycopg.Connection, table: str, rows: list[tuple]) -> tuple[float, float]:
    """(seconds to commit, CPU seconds of this process and of its backend)."""
    conn.execute("CHECKPOINT")
    conn.commit()
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.commit()
    cpu = time.process_time() + _cpu_seconds(backend)
    started = time.perf_counter()
    with conn.cursor().copy(f"COPY {table} ({COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.commit()  # deferred foreign-key checks run here, as for the HTTP path
    elapsed = time.perf_counter() - started
    return elapsed, time.process_time() + _cpu_seconds(backend) - cpu


def copy_full(db_url: str, rows: list[tuple]) -> tuple[float, float]:
    """Empty the event table and COPY the rows back in: every index, the inbox trigger and the
    deferred foreign keys, as in production. Seconds to commit."""
    with psycopg.connect(db_url) as conn:
        inboxes = [
            name
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname = ANY(%s)",
                [list(INBOXES)],
            )
        ]
        conn.execute(f"TRUNCATE metering_usageevent, {', '.join(inboxes)} CASCADE")
        conn.commit()
        timed = _timed_copy(conn, "metering_usageevent", rows)
        inbox = conn.execute("SELECT count(*) FROM metering_rollupinbox").fetchone()[0]
        assert inbox == len(rows), "the inbox trigger did not fire for COPY"
    return timed


def copy_bare(db_url: str, rows: list[tuple]) -> tuple[float, float]:
    """COPY the rows into a fresh table of the same columns whose only index is the events'
    unique key (account, source, transaction_id): no other index, no trigger, no foreign key.
    The least any store that dedupes by key must do. Seconds to commit."""
    with psycopg.connect(db_url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare_event")
        conn.execute(
            "CREATE TABLE bench_bare_event (LIKE metering_usageevent INCLUDING DEFAULTS"
            " INCLUDING IDENTITY, UNIQUE (account_id, source, transaction_id))"
        )
        conn.commit()
        timed = _timed_copy(conn, "bench_bare_event", rows)
        conn.execute("DROP TABLE bench_bare_event")
        conn.commit()
    return timed


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    db_url, maintenance_url = bench_url(args.database)
    key = prepare(db_url, maintenance_url, args)
    run_id = datetime.now(UTC).strftime("%H%M%S")
    log(f"encoding {args.events:,} events in batches of {args.batch:,}")
    bodies = make_bodies(args, run_id)
    body_mb = sum(len(b) for b in bodies) / 1e6
    port = free_port()
    log(f"starting gunicorn: {args.workers} workers on 127.0.0.1:{port}")
    server = start_server(db_url, args.workers, port)
    load_before = os.getloadavg()
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        sampler = MemorySampler(server.pid)
        sampler.start()
        log(f"sending {len(bodies)} batches ({body_mb:.0f} MB) from {args.clients} clients")
        cpu_before = server_cpu(server.pid, db_url)
        first = send_all(port, key, bodies, args.clients)
        http_split = cpu_used(cpu_before, server_cpu(server.pid, db_url))
        http_cpu = sum(http_split.values())
        after_first = stored_count(db_url)
        replay = None
        if not args.no_replay:
            log("replaying every batch")
            replay_before = server_cpu(server.pid, db_url)
            replay = send_all(port, key, bodies, args.clients)
            replay["cpu"] = sum(cpu_used(replay_before, server_cpu(server.pid, db_url)).values())
        after_replay = stored_count(db_url)
        sampler.stop.set()
        sampler.join()
        load_after = os.getloadavg()
    finally:
        stop_server(server)

    log("loading the same rows with COPY: into a bare table, then into the event table")
    rows = read_rows(db_url)
    copied = len(rows)
    bare_seconds, bare_cpu = copy_bare(db_url, rows)
    copy_seconds, copy_cpu = copy_full(db_url, rows)
    del rows

    http_rate = args.events / first["elapsed"]
    copy_rate = copied / copy_seconds
    bare_rate = copied / bare_seconds
    lat = first["latencies"]
    print()
    print(f"events sent                 {args.events:,} in {len(bodies)} batches of {args.batch}")
    print(f"gunicorn workers / clients  {args.workers} / {args.clients}")
    print(f"HTTP ingest                 {http_rate:,.0f} events/s ({first['elapsed']:.1f} s)")
    print(f"COPY, event table           {copy_rate:,.0f} events/s ({copy_seconds:.1f} s)")
    print(f"COPY, bare table            {bare_rate:,.0f} events/s ({bare_seconds:.1f} s)")
    print(f"ratio HTTP / COPY event tbl {http_rate / copy_rate:.2f}   (target >= 0.40)")
    print(f"ratio HTTP / COPY bare tbl  {http_rate / bare_rate:.2f}   (target >= 0.25)")
    print(f"ratio COPY event / bare tbl {copy_rate / bare_rate:.2f}   (what the schema costs)")
    # CPU time per event is what other work on a shared machine disturbs least: HTTP counts
    # gunicorn and its PostgreSQL backends, COPY this process and its backend.
    per = 1e6 / copied
    print(
        f"CPU per event               HTTP {http_cpu * 1e6 / args.events:.1f} us, "
        f"COPY event table {copy_cpu * per:.1f} us, bare {bare_cpu * per:.1f} us; "
        f"ratio bare / HTTP {bare_cpu * per / (http_cpu * 1e6 / args.events):.2f}"
    )
    print(
        f"HTTP CPU per event, by side gunicorn {http_split['gunicorn'] * 1e6 / args.events:.1f} us,"
        f" PostgreSQL backends {http_split['postgres'] * 1e6 / args.events:.1f} us"
    )
    print(
        f"batch latency               p50 {percentile(lat, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(lat, 0.99) * 1000:.0f} ms"
    )
    print(f"server peak RSS (all procs) {sampler.peak / 1e6:.0f} MB")
    print(f"answers                     {first['totals']}  failed requests {first['failures']}")
    ok = after_first == args.events and first["totals"].get("accepted") == args.events
    print(
        f"stored == sent              {after_first:,} == {args.events:,}: {'OK' if ok else 'FAIL'}"
    )
    if replay is not None:
        new = after_replay - after_first
        replay_ok = new == 0 and replay["totals"].get("duplicates") == args.events
        print(
            f"replay                      {args.events / replay['elapsed']:,.0f} events/s, "
            f"{replay['totals']}, new rows stored: {new} "
            f"{'OK' if replay_ok else 'FAIL'}"
        )
        print(f"replay CPU per event        {replay['cpu'] * 1e6 / args.events:.1f} us (HTTP side)")
    print(
        "load average (1/5/15 min)   before "
        + " ".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + " ".join(f"{x:.2f}" for x in load_after)
        + f"  ({os.cpu_count()} CPUs)"
    )
    if not ok or (replay is not None and not replay_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
