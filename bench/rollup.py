"""Benchmark: roll up millions of events, against a plain GROUP BY over the same rows.

    uv run python bench/rollup.py                      # 10,000,000 events, 10,000 accounts
    uv run python bench/rollup.py --quick              # 1,000,000 events, 1,000 accounts
    uv run python bench/rollup.py --events N --accounts N --days D --batch-size B

It works in its own database (`meterops_bench_rollup`, or `..._quick`, on the server of
$DATABASE_URL), recreated at the start and kept afterwards so that bench/usage.py can read the
same data. Steps:

1. migrate; create the accounts (a mix of zones: UTC, America/New_York, Europe/Berlin,
   Asia/Kolkata, Asia/Kathmandu) and five meters, one per aggregation, three with dimensions;
2. seed the events with COPY, in time order over the last `--days` days, as a live system
   would receive them (the insert trigger fills the rollup inbox, as for any write);
3. time a plain GROUP BY that computes the daily aggregation (account, meter, local day:
   count, sum, max) over all events into a table; then a fairer baseline: plain GROUP BYs
   computing every row the drain writes (hourly and daily, per meter and per dimension value,
   all five aggregates, the distinct values) into fresh tables, once unindexed and once with
   the rollup tables' primary keys and indexes;
4. time the full rollup drain of the inbox (hourly + daily rows, per dimension value, the
   distinct values of unique_count meters, the inbox emptied into the rolled-up feed), by `--workers` drains side by
   side, each on its own share of the accounts, as ROLLUP_DRAIN_WORKERS runs them;
5. print events/s for all, the ratio rollup events/s / GROUP BY events/s (target >= 0.5)
   for the daily GROUP BY and for the fairer baselines, and peak memory (this process and the
   PostgreSQL backends that did the work).

The rollup does strictly more than the GROUP BY: two granularities, dimension rows, distinct
values, and a durable claim of every inbox row; the ratio says what that exactness costs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import sys
import time
from bisect import bisect
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu"]
ENDPOINTS = [f"/v1/{name}" for name in ("search", "embed", "chat", "files", "users")] + [
    f"/v2/resource{i}" for i in range(15)
]
REGIONS = ["us-east", "us-west", "eu-west", "eu-central", "ap-south", "sa-east"]
PLANS = ["free", "pro", "team"]
# code, aggregation, value property, dimensions, unit, share of events
METERS = [
    ("api_calls", "count", "", ["endpoint", "region"], "calls", 0.50),
    ("storage_bytes", "sum", "bytes", ["region"], "bytes", 0.20),
    ("peak_gb", "max", "gb", [], "GB", 0.10),
    ("seats", "latest", "seats", [], "seats", 0.05),
    ("active_users", "unique_count", "user", ["plan"], "users", 0.15),
]
USERS_PER_ACCOUNT = 50
COPY_CHUNK = 1_000_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="events to seed (10,000,000)")
    parser.add_argument("--accounts", type=int, default=None, help="accounts (10,000)")
    parser.add_argument("--days", type=int, default=30, help="days the events span (30)")
    parser.add_argument("--batch-size", type=int, default=None, help="rollup batch size")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="drains side by side, each on its share of the accounts (2: one per core here)",
    )
    parser.add_argument("--quick", action="store_true", help="1M events, 1,000 accounts")
    parser.add_argument("--database", default=None, help="database name to (re)create")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the events already seeded in the database; empty the rollups and put every"
        " event back in the inbox (the state right after seeding) instead of seeding again",
    )
    args = parser.parse_args()
    args.events = args.events or (1_000_000 if args.quick else 10_000_000)
    args.accounts = args.accounts or (1_000 if args.quick else 10_000)
    args.database = args.database or (
        "meterops_bench_rollup_quick" if args.quick else "meterops_bench_rollup"
    )
    return args


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed_catalog(n_accounts: int, rng: random.Random) -> tuple[list[int], list[tuple]]:
    from metering.models import Account, Meter

    Account.objects.bulk_create(
        [
            Account(
                external_id=f"bench-{i:05d}",
                name=f"Bench customer {i}",
                timezone=ZONES[i % len(ZONES)],
            )
            for i in range(n_accounts)
        ],
        batch_size=5000,
    )
    for code, aggregation, prop, dims, unit, _ in METERS:
        Meter.objects.create(
            code=code,
            name=code.replace("_", " ").title(),
            aggregation=aggregation,
            value_property=prop,
            dimensions=dims,
            unit=unit,
        )
    account_ids = list(Account.objects.order_by("pk").values_list("pk", flat=True))
    meters = [
        (Meter.objects.get(code=code).pk, code, aggregation, prop, share)
        for code, aggregation, prop, _, _, share in METERS
    ]
    return account_ids, meters


def event_rows(args, account_ids: list[int], meters: list[tuple], rng: random.Random):
    """Text COPY lines for the events, in time order across all accounts."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    start = end - timedelta(days=args.days)
    span_us = int((end - start).total_seconds() * 1_000_000)
    step = span_us / args.events
    start_us = int(start.timestamp() * 1_000_000)
    cumulative = []
    total = 0.0
    for meter in meters:
        total += meter[4]
        cumulative.append((total, meter))
    late_before = end - timedelta(days=2)
    late_before_us = int(late_before.timestamp() * 1_000_000)
    choice = rng.choice
    rand = rng.random
    randrange = rng.randrange
    sha256 = hashlib.sha256
    thresholds = [threshold for threshold, _ in cumulative]
    minute_cache: dict[int, str] = {}
    for i in range(args.events):
        occurred_us = start_us + int(i * step) + randrange(max(int(step), 1))
        minute, within = divmod(occurred_us, 60_000_000)
        prefix = minute_cache.get(minute)
        if prefix is None:
            minute_cache.clear()
            prefix = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%d %H:%M:")
            minute_cache[minute] = prefix
        seconds, micros = divmod(within, 1_000_000)
        ts = f"{prefix}{seconds:02d}.{micros:06d}+00"
        picked = cumulative[min(bisect(thresholds, rand()), len(cumulative) - 1)][1]
        meter_id, aggregation = picked[0], picked[2]
        account = choice(account_ids)
        unique = ""
        if aggregation == "count":
            value = "1"
            props = f'{{"endpoint": "{choice(ENDPOINTS)}", "region": "{choice(REGIONS)}"}}'
        elif aggregation == "sum":
            value = f"{randrange(1, 10**9)}.{randrange(1000):03d}"
            props = f'{{"bytes": "{value}", "region": "{choice(REGIONS)}"}}'
        elif aggregation == "max":
            value = f"{randrange(1, 5000)}.{randrange(100):02d}"
            props = f'{{"gb": "{value}"}}'
        elif aggregation == "latest":
            value = str(randrange(1, 500))
            props = f'{{"seats": "{value}"}}'
        else:
            value = "\\N"
            unique = f"user-{randrange(USERS_PER_ACCOUNT)}"
            props = f'{{"plan": "{choice(PLANS)}", "user": "{unique}"}}'
        transaction_id = f"b{i}"
        # A stand-in fingerprint: the bench never re-ingests, and the real one (canonical JSON +
        # SHA-256) would only slow the seeding down.
        digest = sha256(transaction_id.encode()).hexdigest()
        late = "t" if occurred_us < late_before_us else "f"
        yield (
            f"{account}\t{meter_id}\t{transaction_id}\t\t{ts}\t{ts}\t{value}\t{unique}\t"
            f"{props}\t\\\\x{digest}\t{late}\tnormal\t\\N\n"
        )


def _drop_secondary_structures(cursor) -> list[str]:
    """Drop the event table's foreign keys, unique constraint and secondary indexes for the bulk
    load (the usual practice: building them once afterwards is far cheaper than maintaining
    them row by row), returning the statements that put them back. The primary key and the
    inbox trigger stay, so every seeded event gets its inbox row exactly as in production."""
    cursor.execute(
        """
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = 'metering_usageevent'::regclass AND contype IN ('f', 'u')
        """
    )
    constraints = cursor.fetchall()
    cursor.execute(
        """
        SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = 'metering_usageevent'::regclass AND NOT x.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
        """
    )
    indexes = cursor.fetchall()
    restore = [definition for _, definition in indexes]
    restore += [
        f'ALTER TABLE metering_usageevent ADD CONSTRAINT "{name}" {definition}'
        for name, definition in constraints
    ]
    for name, _ in constraints:
        cursor.execute(f'ALTER TABLE metering_usageevent DROP CONSTRAINT "{name}"')
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    return restore


def seed_events(args, account_ids, meters, rng) -> tuple[float, float]:
    from django.db import connection

    columns = (
        "account_id, meter_id, transaction_id, source, occurred_at, received_at, value,"
        " unique_value, properties, content_hash, is_late, kind, corrects_id"
    )
    started = time.perf_counter()
    rows = event_rows(args, account_ids, meters, rng)
    written = 0
    with connection.cursor() as cursor:
        restore = _drop_secondary_structures(cursor)
        raw = cursor.cursor  # psycopg cursor: COPY FROM STDIN
        while written < args.events:
            chunk = min(COPY_CHUNK, args.events - written)
            with raw.copy(f"COPY metering_usageevent ({columns}) FROM STDIN") as copy:
                lines: list[str] = []
                for n, line in enumerate(rows, 1):
                    lines.append(line)
                    if len(lines) == 20_000:
                        copy.write("".join(lines))
                        lines = []
                    if n == chunk:
                        break
                copy.write("".join(lines))
            written += chunk
            elapsed = time.perf_counter() - started
            print(f"  seeded {written:,} events ({written / elapsed:,.0f}/s)", flush=True)
        copied = time.perf_counter() - started
        cursor.execute("SET maintenance_work_mem = '512MB'")
        for statement in restore:
            cursor.execute(statement)
    return copied, time.perf_counter() - started - copied


def reset_for_rerun(args) -> None:
    """Back to the state right after seeding: no rollups, every event in the inbox."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usageevent")
        events = cursor.fetchone()[0]
        if events != args.events:
            raise SystemExit(
                f"--reuse: {args.database} holds {events:,} events, not {args.events:,}"
            )
        cursor.execute(
            "TRUNCATE metering_rolluphourly, metering_rollupdaily, metering_rolluphourlydistinct,"
            " metering_rollupdailydistinct, metering_rollupinbox"
        )
        # The drain appends to the rolled-up feed (where it exists: older schemas had none).
        cursor.execute("SELECT to_regclass('metering_rolledupevent') IS NOT NULL")
        if cursor.fetchone()[0]:
            cursor.execute("TRUNCATE metering_rolledupevent")
        cursor.execute(
            "INSERT INTO metering_rollupinbox (event_id, account_id)"
            " SELECT id, account_id FROM metering_usageevent"
        )
    print(f"Reusing the {events:,} events of {args.database}; rollups emptied, inbox refilled")


def server_settings() -> str:
    """The PostgreSQL settings that most shape write-heavy figures, to read them by."""
    from django.db import connection

    names = ["shared_buffers", "max_wal_size", "work_mem", "max_parallel_workers_per_gather"]
    with connection.cursor() as cursor:
        values = []
        for name in names:
            cursor.execute(f"SHOW {name}")
            values.append(f"{name}={cursor.fetchone()[0]}")
    return ", ".join(values)


def backend_peak_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class BackendPeaks:
    """Samples, every half second, the peak memory (VmHWM) of every PostgreSQL backend connected
    to the bench database, so the drain workers' backends are measured too."""

    def __init__(self, url: str):
        import threading

        self.url = url
        self.peak_kb: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.5):
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
                for (pid,) in pids:
                    kb = backend_peak_kb(pid)
                    if kb is not None:
                        self.peak_kb[pid] = max(kb, self.peak_kb.get(pid, 0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def time_group_by() -> tuple[float, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_group_by")
        started = time.perf_counter()
        cursor.execute(
            """
            CREATE UNLOGGED TABLE bench_group_by AS
            SELECT e.account_id, e.meter_id, (e.occurred_at AT TIME ZONE a.timezone)::date AS day,
                   count(e.value) AS count, sum(e.value) AS sum, max(e.value) AS max
            FROM metering_usageevent e
            JOIN metering_account a ON a.id = e.account_id
            GROUP BY 1, 2, 3
            """
        )
        elapsed = time.perf_counter() - started
        cursor.execute("SELECT count(*) FROM bench_group_by")
        groups = cursor.fetchone()[0]
        cursor.execute("DROP TABLE bench_group_by")
    return elapsed, groups


# The fair baseline: every output of the drain, computed by plain GROUP BY / DISTINCT over the
# same events in one pass per output table. `c` is one row per event for the whole meter
# (dim_key "") and one per dimension key of its meter, exactly as rollup_contrib; the aggregate
# expressions are the drain's own (rollups_sql.AGGREGATES with the exact unique count), so the
# rows match those the drain writes. The bench data has no corrections and no dimension key
# with more values than the cap, so neither needs handling here.
def _contributions(bucket_sql: str) -> str:
    return f"""
    SELECT e.account_id, e.meter_id, d.dim_key, d.dim_value, false AS folded,
           {bucket_sql} AS bucket, e.id, e.occurred_at, e.value, e.unique_value
    FROM metering_usageevent e
    JOIN metering_account a ON a.id = e.account_id
    JOIN metering_meter m ON m.id = e.meter_id
    CROSS JOIN LATERAL (
        SELECT ''::text, ''::text
        UNION ALL
        SELECT k, left(coalesce(e.properties ->> k, ''), 255)
        FROM jsonb_array_elements_text(m.dimensions) AS k
    ) AS d(dim_key, dim_value)
    """


def fair_baseline_statements(*, indexed: bool) -> tuple[list[str], list[str]]:
    """(statements to time, tables they create). Unindexed: CREATE TABLE AS (logged, like the
    rollup tables). Indexed: empty copies of the rollup tables with their primary keys and BRIN
    indexes (LIKE ... INCLUDING ALL), filled by INSERT ... SELECT."""
    from metering import rollups_sql as q

    aggregates = q.AGGREGATES.format(unique=q.UNIQUE_EXACT)
    statements, tables = [], []
    for grain, bucket_sql in (("hour", q.HOUR_OF), ("day", q.DAY_OF)):
        rows = f"""
        SELECT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.bucket AS {grain},
               {aggregates}
        FROM ({_contributions(bucket_sql)}) c
        GROUP BY c.account_id, c.meter_id, c.dim_key, c.bucket, c.dim_value
        """
        distinct = f"""
        SELECT DISTINCT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.bucket AS {grain},
               c.unique_value AS value
        FROM ({_contributions(bucket_sql)}) c
        WHERE c.unique_value <> ''
        """
        for source, target, sql in (
            ("rows", q.table(grain), rows),
            ("distinct", q.distinct_table(grain), distinct),
        ):
            name = f"bench_fair_{grain}_{source}"
            tables.append(name)
            if indexed:
                columns = "account_id, meter_id, dim_key, dim_value, " + grain
                columns += ", " + ", ".join(q.STAT_COLUMNS) if source == "rows" else ", value"
                statements.append(f"CREATE TABLE {name} (LIKE {target} INCLUDING ALL)")
                statements.append(f"INSERT INTO {name} ({columns}) {sql}")
            else:
                statements.append(f"CREATE TABLE {name} AS {sql}")
    return statements, tables


def time_fair_baseline(*, indexed: bool) -> tuple[float, int]:
    """Seconds to compute every output of the drain with plain GROUP BYs, and rows written."""
    from django.db import connection

    statements, tables = fair_baseline_statements(indexed=indexed)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}")
        # The drain runs with this work_mem (rollups_sql.TUNE); give the baseline the same.
        cursor.execute("SET work_mem = '64MB'")
        started = time.perf_counter()
        for statement in statements:
            cursor.execute(statement)
        elapsed = time.perf_counter() - started
        cursor.execute("SELECT " + " + ".join(f"(SELECT count(*) FROM {t})" for t in tables))
        written = cursor.fetchone()[0]
        cursor.execute("RESET work_mem")
        cursor.execute(f"DROP TABLE {', '.join(tables)}")
    return elapsed, written


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    rng = random.Random(args.seed)
    print(
        f"Rollup benchmark: {args.events:,} events, {args.accounts:,} accounts, "
        f"{args.days} days, database {args.database}"
    )
    if not args.reuse:
        recreate_database(args.database, maintenance)
    setup_django(url)

    from django.core.management import call_command
    from django.db import connection

    from metering.services import rollups

    call_command("migrate", verbosity=0)
    if args.reuse:
        reset_for_rerun(args)
    else:
        account_ids, meters = seed_catalog(args.accounts, rng)
        copy_seconds, index_seconds = seed_events(args, account_ids, meters, rng)
        print(
            f"Seeded {args.events:,} events with COPY in {copy_seconds:,.1f} s"
            f" ({args.events / copy_seconds:,.0f}/s), indexes and constraints rebuilt in"
            f" {index_seconds:,.1f} s"
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE metering_usageevent")
        cursor.execute("VACUUM ANALYZE metering_rollupinbox")
        cursor.execute("VACUUM ANALYZE metering_account")
        cursor.execute("CHECKPOINT")
        cursor.execute("SELECT count(*) FROM metering_rollupinbox")
        pending = cursor.fetchone()[0]
    assert pending == args.events, f"inbox holds {pending:,}, expected {args.events:,}"

    group_by_seconds, groups = time_group_by()
    group_by_rate = args.events / group_by_seconds
    print(f"GROUP BY (daily, local days): {group_by_seconds:,.1f} s, {groups:,} groups")
    fair_seconds, fair_rows = time_fair_baseline(indexed=False)
    fair_rate = args.events / fair_seconds
    print(f"GROUP BY (same rollup rows, unindexed): {fair_seconds:,.1f} s, {fair_rows:,} rows")
    fair_ix_seconds, fair_ix_rows = time_fair_baseline(indexed=True)
    fair_ix_rate = args.events / fair_ix_seconds
    print(
        f"GROUP BY (same rollup rows, same indexes): {fair_ix_seconds:,.1f} s,"
        f" {fair_ix_rows:,} rows"
    )
    with connection.cursor() as cursor:
        # The baselines' writes must not be flushed on the drain's time.
        cursor.execute("CHECKPOINT")

    started = time.perf_counter()
    done = [0]
    next_report = [args.events // 10]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] >= next_report[0]:
            elapsed = time.perf_counter() - started
            print(f"  rolled up {done[0]:,} events ({done[0] / elapsed:,.0f}/s)", flush=True)
            next_report[0] += args.events // 10

    with BackendPeaks(url) as peaks:
        result = rollups.rollup_drain_parallel(
            workers=args.workers, batch_size=args.batch_size, progress=progress
        )
    rollup_seconds = time.perf_counter() - started
    rollup_rate = result.events / rollup_seconds
    assert result.events == args.events, f"rolled up {result.events:,} of {args.events:,}"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM metering_rolluphourly),"
            " (SELECT count(*) FROM metering_rollupdaily),"
            " (SELECT count(*) FROM metering_rolluphourlydistinct)"
            " + (SELECT count(*) FROM metering_rollupdailydistinct),"
            " (SELECT count(*) FROM metering_rollupinbox)"
        )
        hourly_rows, daily_rows, distinct_rows, left = cursor.fetchone()
        cursor.execute("VACUUM ANALYZE")

    python_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = args.batch_size or rollups.batch_size_default()
    print()
    print(
        f"Rollup drain:  {rollup_seconds:,.1f} s for {result.events:,} events in "
        f"{result.batches} batches of {batch:,}, {args.workers} worker(s) side by side"
        f" -> {rollup_rate:,.0f} events/s"
    )
    print(
        f"  wrote {hourly_rows:,} hourly rows, {daily_rows:,} daily rows, "
        f"{distinct_rows:,} distinct values; inbox left: {left}"
    )
    print(f"GROUP BY:      {group_by_seconds:,.1f} s -> {group_by_rate:,.0f} events/s")
    print(
        f"Ratio (rollup events/s / GROUP BY events/s): {rollup_rate / group_by_rate:.3f} "
        "(target >= 0.5)"
    )
    print()
    print(
        "Fairer baseline: plain GROUP BYs producing the same rollup rows (hourly UTC and daily"
        " local, per meter and per dimension value, the distinct values of unique_count), one"
        " statement per output table, logged tables:"
    )
    print(
        f"  into fresh unindexed tables:  {fair_seconds:,.1f} s -> {fair_rate:,.0f} events/s,"
        f" {fair_rows:,} rows (the drain wrote"
        f" {hourly_rows + daily_rows + distinct_rows:,}); ratio drain / this:"
        f" {rollup_rate / fair_rate:.3f}"
    )
    print(
        f"  into tables with the rollups' primary keys and BRIN indexes:  {fair_ix_seconds:,.1f} s"
        f" -> {fair_ix_rate:,.0f} events/s; ratio drain / this: {rollup_rate / fair_ix_rate:.3f}"
    )
    peak = f"Peak memory: this process {python_peak_mb:,.0f} MB"
    if peaks.peak_kb:
        worst = max(peaks.peak_kb.values())
        peak += (
            f", PostgreSQL backends during the drain: {len(peaks.peak_kb)}, the largest"
            f" {worst / 1024:,.0f} MB (VmHWM)"
        )
    print(peak)
    print(f"Load: {Path('/proc/loadavg').read_text().strip()}")
    print(f"Server: {server_settings()}")
    print(f"Database kept for bench/usage.py: {args.database}")


if __name__ == "__main__":
    main()
