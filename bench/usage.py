"""Benchmark: the usage API and the admin account usage page, against raw-event GROUP BYs.

    uv run python bench/usage.py                      # the database bench/rollup.py left
    uv run python bench/usage.py --db NAME            # any migrated, rolled-up database
    uv run python bench/usage.py --requests 100       # fewer requests per measurement
    uv run python bench/usage.py --quick              # small: 100k events + 2 whales of 300k

Which data: `--db NAME` if given; else the database bench/rollup.py keeps
(`meterops_bench_rollup`, then `meterops_bench_rollup_quick`) when it exists and is fully
rolled up; else it seeds `meterops_bench_usage` itself with bench/rollup.py's seeding (COPY,
default 1,000,000 events for 1,000 accounts over 30 days) and one rollup drain. All on the
server of $DATABASE_URL.

What it measures, server-side, in this process through Django's test Client (the whole request:
middleware, authentication, view, selectors, rendering; no network), for `--requests` random
accounts, interleaved:

1. GET /api/v1/accounts/{id}/usage, day granularity, the last 30 local days, one meter;
2. the same with group_by (the meter's first dimension);
3. GET /admin/metering/account/{id}/usage/ as a Support user (charts, totals, recent events),
   and the account's page, /admin/metering/account/{id}/change/ (the hub: why the bill
   changed, projection, alerts, mismatches; its charts load later, in tabs);

and, for comparison without HTTP, the same questions read straight from the rollups (the
selectors the views call) and answered from the raw events with plain SQL:
4. the daily series of (1): `usage_series`, and a GROUP BY over the account's events;
5. the daily series by dimension value of (2): the same, by dimension value;
6. the page's data: `account_usage_dashboard`, and a GROUP BY of every meter by local day over
   this and the previous calendar month.

Whales: real customers are not all small. `--whales N` (default 3) accounts with
`--whale-events` each (default 3,000,000 over the `--days`, i.e. millions a month, about 4,000
events an account-hour against ~1.4 for the others) are seeded next to the others in the bench's
own database, and the same measurements are reported for them separately (`--whale-requests`
requests, interleaved over the whales), where the raw-event GROUP BYs read millions of rows.
Whales are measured when the database has accounts named `whale-*` (the bench's own database
always does; bench/rollup.py's do not).

Targets: API p95 < 30 ms, page p95 < 150 ms. Settings are production-like (DEBUG off, so no
query log). Everything the run writes (a Support user, an API key, a session) is rolled back.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, database_url, recreate_database  # noqa: E402

ROLLUP_DATABASES = ("meterops_bench_rollup", "meterops_bench_rollup_quick")
OWN_DATABASE = "meterops_bench_usage"
OWN_DATABASE_QUICK = "meterops_bench_usage_quick"
WHALE_PREFIX = "whale-"
TARGETS = {"api": 30.0, "page": 150.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database to read (default: see above)")
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument("--events", type=int, default=1_000_000, help="events if seeding")
    parser.add_argument("--accounts", type=int, default=1_000, help="accounts if seeding")
    parser.add_argument("--days", type=int, default=30, help="days of events if seeding")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--whales", type=int, default=3, help="whale accounts if seeding")
    parser.add_argument(
        "--whale-events", type=int, default=3_000_000, help="events per whale if seeding"
    )
    parser.add_argument(
        "--whale-requests", type=int, default=30, help="requests per measurement for whales"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small: 100,000 events, 200 accounts, 2 whales of 300,000, 60 + 12 requests, in "
        f"{OWN_DATABASE_QUICK}",
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.accounts, args.requests = 100_000, 200, 60
        args.whales, args.whale_events, args.whale_requests = 2, 300_000, 12
    return args


def is_rolled_up(database: str, *, whales: bool = False) -> bool:
    """The database exists, has events (and whales, if asked), and its rollup inbox is empty."""
    import psycopg

    try:
        with psycopg.connect(database_url(database), connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM metering_usageevent),"
                " NOT EXISTS (SELECT 1 FROM metering_rollupinbox),"
                " EXISTS (SELECT 1 FROM metering_account WHERE external_id LIKE %s)",
                [f"{WHALE_PREFIX}%"],
            ).fetchone()
    except psycopg.Error:
        return False
    return bool(row[0] and row[1] and (row[2] or not whales))


def load_rollup_bench():
    spec = importlib.util.spec_from_file_location("bench_rollup", ROOT / "bench" / "rollup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def production_like_env(database: str) -> None:
    os.environ["DATABASE_URL"] = database_url(database)
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("SECRET_KEY", "bench-usage-only")
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost"
    os.environ["SECURE_SSL_REDIRECT"] = "false"
    # Hundreds of reads a minute on one key: the bench measures reads, not the rate limit.
    os.environ.setdefault("API_RATE_READ", "off")
    # Server-side timings only: static URLs unhashed, so no collectstatic is needed.
    os.environ.setdefault("STATIC_COLLECTED", "false")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def seed_own(args, database: str) -> None:
    """A smaller data set of the same shape as bench/rollup.py's plus the whales, rolled up."""
    rollup_bench = load_rollup_bench()
    _url, maintenance = bench_url(database)
    print(
        f"Seeding {database}: {args.events:,} events, {args.accounts:,} accounts, "
        f"{args.whales} whales of {args.whale_events:,} events"
    )
    recreate_database(database, maintenance)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from metering.services import rollups

    call_command("migrate", verbosity=0)
    rng = random.Random(args.seed)
    account_ids, meters = rollup_bench.seed_catalog(args.accounts, rng)
    seed_args = argparse.Namespace(events=args.events, days=args.days)
    rollup_bench.seed_events(seed_args, account_ids, meters, rng)
    if args.whales:
        from metering.models import Account

        whales = Account.objects.bulk_create(
            [
                Account(
                    external_id=f"{WHALE_PREFIX}{i:02d}",
                    name=f"Whale customer {i}",
                    timezone=rollup_bench.ZONES[i % len(rollup_bench.ZONES)],
                )
                for i in range(args.whales)
            ]
        )
        # Their own transaction ids restart at b0: unique per account, as in production.
        whale_args = argparse.Namespace(events=args.whales * args.whale_events, days=args.days)
        rollup_bench.seed_events(whale_args, [w.pk for w in whales], meters, rng)
    started = time.perf_counter()
    result = rollups.rollup_drain()
    print(f"  rolled up {result.events:,} events in {time.perf_counter() - started:,.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def percentiles(samples: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98], ordered[-1]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def run(args, database: str) -> None:
    """The measurements for ordinary accounts, then for the whales, if any."""
    import django

    django.setup()
    from django.core.management import call_command

    # A database seeded by an older checkout gets the newer tables (the pages write to them).
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection, transaction
    from django.test import Client
    from django.utils import timezone

    from metering import periods
    from metering.dashboard_selectors import account_usage_dashboard, calendar_month_periods
    from metering.models import Account, Meter
    from metering.rollup_selectors import usage_series
    from metering.services.api_keys import api_key_create

    meters = list(Meter.objects.order_by("code"))
    with_dims = [m for m in meters if m.dimensions]
    meter = next(
        (m for m in with_dims if m.code == "api_calls"), with_dims[0] if with_dims else meters[0]
    )
    dimension = meter.dimensions[0] if meter.dimensions else None
    accounts = list(Account.objects.exclude(external_id__startswith=WHALE_PREFIX).order_by("pk"))
    whales = list(Account.objects.filter(external_id__startswith=WHALE_PREFIX).order_by("pk"))
    rng = random.Random(args.seed)
    sample = [rng.choice(accounts) for _ in range(args.requests)]
    whale_sample = [whales[i % len(whales)] for i in range(args.whale_requests)] if whales else []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT reltuples::bigint FROM pg_class WHERE relname = 'metering_usageevent'),"
            " (SELECT reltuples::bigint FROM pg_class WHERE relname = 'metering_rollupdaily'),"
            " (SELECT reltuples::bigint FROM pg_class WHERE relname = 'metering_rolluphourly')"
        )
        events, daily, hourly = cursor.fetchone()
    print(
        f"Database {database}: ~{events:,} events, {len(accounts):,} accounts + "
        f"{len(whales)} whales, "
        f"~{daily:,} daily and ~{hourly:,} hourly rollup rows"
    )
    print(
        f"Meter {meter.code} ({meter.aggregation}), group_by {dimension}; "
        f"{args.requests} random accounts per measurement"
    )
    print(f"Load before: {Path('/proc/loadavg').read_text().strip()}")

    now = timezone.now()
    raw_daily = """
        SELECT (occurred_at AT TIME ZONE %(tz)s)::date AS day, count(value), sum(value)
        FROM metering_usageevent
        WHERE account_id = %(a)s AND meter_id = %(m)s AND occurred_at >= %(lo)s
          AND occurred_at < %(hi)s
        GROUP BY 1 ORDER BY 1"""
    raw_grouped = """
        SELECT (occurred_at AT TIME ZONE %(tz)s)::date AS day, properties ->> %(dim)s,
               count(value), sum(value)
        FROM metering_usageevent
        WHERE account_id = %(a)s AND meter_id = %(m)s AND occurred_at >= %(lo)s
          AND occurred_at < %(hi)s
        GROUP BY 1, 2 ORDER BY 1, 2"""
    raw_page = """
        SELECT meter_id, (occurred_at AT TIME ZONE %(tz)s)::date AS day, count(value),
               sum(value), max(value), count(DISTINCT nullif(unique_value, ''))
        FROM metering_usageevent
        WHERE account_id = %(a)s AND meter_id = ANY(%(ms)s) AND occurred_at >= %(lo)s
          AND occurred_at < %(hi)s
        GROUP BY 1, 2"""
    meter_ids = [m.pk for m in meters]

    def new_results() -> dict[str, list[float]]:
        return {key: [] for key in keys}

    keys = [
        "api",
        "api_group",
        "api_group_warm",
        "page",
        "hub",
        "rollup",
        "rollup_group",
        "rollup_page",
        "raw",
        "raw_group",
        "raw_page",
    ]
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username="bench-usage-support", password="unused-bench-9", is_staff=True
        )
        user.groups.add(Group.objects.get(name="Support"))
        _key, raw_key = api_key_create(name="bench usage", scopes=["read"])
        staff = Client()
        staff.force_login(user)
        api = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")

        def one(account, results: dict | None) -> None:
            today = periods.local_date(now, account.timezone)
            first, end = today - timedelta(days=29), today + timedelta(days=1)
            lo, hi = periods.days_bounds_utc(first, end, account.timezone)
            url = f"/api/v1/accounts/{account.external_id}/usage"
            params = {"meter": meter.code, "from": first.isoformat(), "to": end.isoformat()}
            month = calendar_month_periods(account=account, at=now)
            page_lo, page_hi = periods.days_bounds_utc(
                month.previous.first, month.current.end, account.timezone
            )
            sql = {"tz": account.timezone, "a": account.pk, "m": meter.pk, "lo": lo, "hi": hi}
            checks = []

            def get(client, path, query=None):
                response = client.get(path, query or {})
                checks.append(response.status_code)

            def query(statement, values):
                with connection.cursor() as cursor:
                    cursor.execute(statement, values)
                    cursor.fetchall()

            timings = {
                "api": timed(lambda: get(api, url, params)),
                "api_group": timed(
                    lambda: get(
                        api, url, {**params, "group_by": dimension} if dimension else params
                    )
                ),
                # The same request again at once: what a cached read costs, against the first
                # read of this account's dimension rows above.
                "api_group_warm": timed(
                    lambda: get(
                        api, url, {**params, "group_by": dimension} if dimension else params
                    )
                ),
                "page": timed(lambda: get(staff, f"/admin/metering/account/{account.pk}/usage/")),
                # The account's page (the hub): the sentence, projection, alerts, mismatches.
                "hub": timed(lambda: get(staff, f"/admin/metering/account/{account.pk}/change/")),
                "rollup": timed(
                    lambda: usage_series(account=account, meter=meter, start=first, end=end)
                ),
                "rollup_group": timed(
                    lambda: usage_series(
                        account=account,
                        meter=meter,
                        start=first,
                        end=end,
                        group_by=dimension,
                        top=25,
                    )
                ),
                "rollup_page": timed(lambda: account_usage_dashboard(account=account, at=now)),
                "raw": timed(lambda: query(raw_daily, sql)),
                "raw_group": timed(lambda: query(raw_grouped, {**sql, "dim": dimension or ""})),
                "raw_page": timed(
                    lambda: query(raw_page, {**sql, "ms": meter_ids, "lo": page_lo, "hi": page_hi})
                ),
            }
            if any(code != 200 for code in checks):
                raise SystemExit(f"a request failed for {account.external_id}: {checks}")
            if results is not None:
                for name, ms in timings.items():
                    results[name].append(ms)

        for account in sample[:10]:  # warm-up: imports, template compilation, caches
            one(account, None)
        started = time.perf_counter()
        ordinary = new_results()
        for account in sample:
            one(account, ordinary)
        wall = time.perf_counter() - started
        whale_results = new_results()
        whale_wall = 0.0
        if whale_sample:
            one(whale_sample[0], None)  # warm-up
            started = time.perf_counter()
            for account in whale_sample:
                one(account, whale_results)
            whale_wall = time.perf_counter() - started
        transaction.set_rollback(True)

    report(ordinary, f"Ordinary accounts ({len(sample)} requests)", dimension)
    print(f"Wall time {wall:,.1f} s.")
    if whale_sample:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM metering_usageevent WHERE account_id = ANY(%s)",
                [[w.pk for w in whales]],
            )
            whale_events = cursor.fetchone()[0]
        report(
            whale_results,
            f"Whales ({len(whales)} accounts, {whale_events / len(whales):,.0f} events each over "
            f"the data's days; {len(whale_sample)} requests)",
            dimension,
        )
        print(f"Wall time {whale_wall:,.1f} s.")
    print(f"Load after: {Path('/proc/loadavg').read_text().strip()}")


def report(results: dict[str, list[float]], title: str, dimension) -> None:

    labels = [
        ("api", "usage API, day, 30 days", "p95 < 30 ms"),
        ("api_group", f"usage API, day, 30 days, group_by={dimension}", "p95 < 30 ms"),
        ("api_group_warm", "  the same, repeated at once (warm cache)", "p95 < 30 ms"),
        ("page", "admin account usage page", "p95 < 150 ms"),
        ("hub", "admin account page (the hub, first paint)", "p95 < 150 ms"),
        ("rollup", "rollups: the API's question (selector only)", ""),
        ("rollup_group", "rollups: the API's question by dimension", ""),
        ("rollup_page", "rollups: the page's data (selector only)", ""),
        ("raw", "raw events: the API's question", ""),
        ("raw_group", "raw events: the API's question by dimension", ""),
        ("raw_page", "raw events: the page's daily data (2 months)", ""),
    ]
    print()
    print(title)
    print(
        f"{'measurement':<48} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}  target"
    )
    for key, label, target in labels:
        p50, p95, p99, worst = percentiles(results[key])
        verdict = ""
        if key in ("api", "api_group", "api_group_warm", "page", "hub"):
            limit = TARGETS["page" if key in ("page", "hub") else "api"]
            verdict = f"{target} {'ok' if p95 < limit else 'MISSED'}"
        print(
            f"{label:<48} {len(results[key]):>5} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} "
            f"{worst:>8.1f}  {verdict}"
        )
    for rollup_key, raw_key in (
        ("rollup", "raw"),
        ("rollup_group", "raw_group"),
        ("rollup_page", "raw_page"),
    ):
        ratio = statistics.median(results[raw_key]) / statistics.median(results[rollup_key])
        print(f"  median {raw_key} / median {rollup_key}: {ratio:.2f}x")


def main() -> None:
    args = parse_args()
    if args.db:
        database = args.db
        if not is_rolled_up(database):
            raise SystemExit(f"{database} is missing, empty or not fully rolled up.")
    else:
        # Whales live only in the bench's own database: bench/rollup.py's stay as it left them.
        database = None
        if not args.whales and not args.quick:
            database = next((name for name in ROLLUP_DATABASES if is_rolled_up(name)), None)
        if database is None:
            database = OWN_DATABASE_QUICK if args.quick else OWN_DATABASE
            if not is_rolled_up(database, whales=args.whales > 0):
                production_like_env(database)
                seed_own(args, database)
    production_like_env(database)
    run(args, database)


if __name__ == "__main__":
    main()
