"""Benchmark: evaluate the alert rules for 10,000 accounts x 5 meters (target: under 60 s).

    uv run python bench/alerts.py                       # 10,000 accounts, 5 meters, 63 days
    uv run python bench/alerts.py --accounts 2000 --reuse

It works in its own database (`meterops_bench_alerts` on the server of $DATABASE_URL),
recreated at each run unless --reuse. Steps:

1. migrate (the default spike, drop and quota rules are active); create the accounts (in four
   time zones, every 20th with a quota limit in its metadata) and 5 sum meters;
2. write 63 days of daily rollups and the last 3 days of hourly rollups with SQL
   (`generate_series`): weekday-seasonal usage, 1% of the accounts with a 10x day today and 1%
   silent for the last 3 days. The rollups are written directly because this bench times the
   evaluation, not the drain (bench/rollup.py times that); the evaluation reads only rollups;
3. time one full evaluation (`alerts_evaluate_all`, the slices in one process, as the Celery
   workers would run them one after another) and a second one (refreshes, no new alerts), and
   print accounts/s, alerts opened per kind, and the time per slice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--meters", type=int, default=5)
    parser.add_argument("--days", type=int, default=63)
    parser.add_argument("--reuse", action="store_true", help="keep the database and its data")
    parser.add_argument("--database", default="meterops_bench_alerts")
    return parser.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed(accounts: int, meters: int, days: int, now: datetime) -> None:
    from django.db import connection

    from metering.models import Account, Meter

    rows = Account.objects.bulk_create(
        [
            Account(
                external_id=f"alerts-{i:05d}",
                name=f"Alerts {i}",
                timezone=ZONES[i % len(ZONES)],
                metadata={"limits": {"meter_0": 1_000_000}} if i % 20 == 0 else {},
            )
            for i in range(accounts)
        ],
        batch_size=2000,
    )
    meter_rows = Meter.objects.bulk_create(
        [
            Meter(
                code=f"meter_{m}",
                name=f"Meter {m}",
                aggregation="sum",
                value_property="value",
                dimensions=["endpoint"],
            )
            for m in range(meters)
        ]
    )
    ids = [a.pk for a in rows]
    meter_ids = [m.pk for m in meter_rows]
    today = now.date()
    with connection.cursor() as cursor:
        # Usage per account-meter-day: weekday 1,000 +-10%, weekend 300; accounts with
        # id % 100 == 1 use 10x today, accounts with id % 100 == 2 stop 3 days ago.
        cursor.execute(
            """
            INSERT INTO metering_rollupdaily
                (account_id, meter_id, dim_key, dim_value, day, count, sum, max, latest_value,
                 latest_at, latest_event_id, unique_count, folded)
            SELECT a, m, '', '', d::date, 10, v, v, v, d + interval '12 hours', 0, 0, false
            FROM unnest(%(ids)s::bigint[]) a, unnest(%(meters)s::bigint[]) m,
                 generate_series(%(first)s::date, %(today)s::date, interval '1 day') d,
                 LATERAL (SELECT
                    CASE WHEN a %% 100 = 2 AND d::date > %(today)s::date - 3 THEN 0
                         WHEN a %% 100 = 1 AND d::date = %(today)s::date THEN 10000
                         WHEN extract(isodow FROM d) >= 6 THEN 300
                         ELSE 900 + (a * 7 + m * 13 + extract(doy FROM d)::int * 31) %% 200
                    END AS v) x
            WHERE v > 0
            """,
            {
                "ids": ids,
                "meters": meter_ids,
                "first": today - timedelta(days=days),
                "today": today,
            },
        )
        # The last 3 days' hourly rows (what the drop rule reads): one at noon UTC per day.
        cursor.execute(
            """
            INSERT INTO metering_rolluphourly
                (account_id, meter_id, dim_key, dim_value, hour, count, sum, max, latest_value,
                 latest_at, latest_event_id, unique_count, folded)
            SELECT r.account_id, r.meter_id, '', '', r.day + time '00:00' AT TIME ZONE 'UTC',
                   r.count, r.sum, r.max, r.latest_value, r.latest_at, 0, 0, false
            FROM metering_rollupdaily r
            WHERE r.day >= %(since)s AND r.day < %(today)s AND r.dim_key = ''
            """,
            {"since": today - timedelta(days=3), "today": today},
        )
        cursor.execute("ANALYZE metering_rollupdaily; ANALYZE metering_rolluphourly")


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    if not args.reuse:
        recreate_database(args.database, maintenance)
    setup_django(url)
    from django.core.management import call_command
    from django.db import connection

    from alerts import services
    from alerts.models import Alert

    now = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
    if not args.reuse:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        seed(args.accounts, args.meters, args.days, now)
        print(f"seed: {time.perf_counter() - started:.1f}s")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_rollupdaily")
        print(f"daily rollup rows: {cursor.fetchone()[0]:,}")

    # With --reuse, start from no alerts, as a fresh run does.
    Alert.objects.all().delete()
    ids = services.account_ids_to_evaluate()
    for label in ("first run", "second run"):
        started = time.perf_counter()
        run = services.alerts_evaluate_all(at=now)
        elapsed = time.perf_counter() - started
        print(
            f"{label}: {run.accounts:,} accounts x {args.meters} meters in {elapsed:.1f}s "
            f"({run.accounts / elapsed:,.0f} accounts/s); findings {run.findings}, opened "
            f"{len(run.opened)}, updated {run.updated}, resolved {len(run.resolved)}; "
            f"{len(ids) // services.SLICE_SIZE + 1} slices of {services.SLICE_SIZE}, "
            f"{elapsed / max(1, len(ids) / services.SLICE_SIZE):.2f}s each"
        )
    kinds = Counter(Alert.objects.values_list("kind", flat=True))
    print(f"open alerts by kind: {dict(sorted(kinds.items()))}")
    print("target: < 60 s for 10,000 accounts x 5 meters")


if __name__ == "__main__":
    main()
