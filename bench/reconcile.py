"""Benchmark: reconcile 10,000 accounts × 5 meters × one billing period.

    uv run python bench/reconcile.py                    # 10,000 accounts
    uv run python bench/reconcile.py --accounts 1000    # quicker
    uv run python bench/reconcile.py --reuse            # keep the seeded database, rerun only

It works in its own database (`meterops_bench_reconcile` on the server of $DATABASE_URL).
Steps:

1. migrate; seed with set-based SQL: the accounts (UTC), 5 meters (count, two sums, max,
   latest), a plan pricing them, one 30-day period per account ending yesterday, and for every
   cell and day of the period one hourly and one daily rollup row, one push ledger entry
   (acknowledged; one period-to-date entry per cell for max and latest) and one provider
   day summary; about 1% of the provider's days are one unit short (dropped usage);
2. time one reconciliation of every account without the provider pull (`--no-pull`: the
   summaries are already stored), one recorded run per account, as `manage.py reconcile
   --no-pull` does;
3. time a second run (nothing changed: nothing written);
4. print cells/s, wall time, peak memory (the process's max RSS), and the mismatches found
   against the faults seeded.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402

METERS = (
    ("calls", "count", "calls"),
    ("gpu_hours", "sum", "GPU hours"),
    ("storage_gb", "sum", "GB"),
    ("peak_seats", "max", "seats"),
    ("plan_level", "latest", "level"),
)
DAYS = 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--database", default="meterops_bench_reconcile")
    parser.add_argument("--reuse", action="store_true", help="do not recreate and seed")
    return parser.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ["BILLING_PROVIDER"] = "simulated"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import logging

    import django

    django.setup()
    logging.getLogger("reconciliation").setLevel(logging.ERROR)


SEED_SQL = """
INSERT INTO metering_account (external_id, name, timezone, currency, tier, status,
                              provider_customer_id, metadata, created_at, updated_at)
SELECT 'rc-' || lpad(i::text, 6, '0'), 'Account ' || i, 'UTC', 'USD',
       CASE WHEN i %% 10 = 0 THEN 'pro' ELSE 'growth' END, 'active', '', '{}', now(), now()
FROM generate_series(1, %(n)s) i;

INSERT INTO billing_subscription (account_id, plan_id, started_at, billing_anchor_day, status,
                                  provider_subscription_id, provider_item_ids, created_at,
                                  updated_at)
SELECT a.id, %(plan)s, %(start)s, extract(day FROM %(start)s::date), 'active', '', '{}',
       now(), now()
FROM metering_account a;

INSERT INTO billing_billingperiod (subscription_id, account_id, start_date, end_date, timezone,
                                   starts_at, ends_at, state, currency, invoice_lines,
                                   hold_reason, created_at, updated_at)
SELECT s.id, s.account_id, %(start)s, %(end)s, 'UTC', %(start)s::timestamptz,
       %(end)s::timestamptz, 'open', 'USD', '[]', '', now(), now()
FROM billing_subscription s;

CREATE TEMP TABLE bench_cells AS
SELECT a.id AS account_id, a.external_id, m.id AS meter_id, m.aggregation, d::date AS day,
       (d + make_interval(hours => (a.id %% 24)::int))::timestamptz AS hour,
       (1 + (a.id * 7 + m.id * 13 + extract(doy FROM d)::int) %% 50)::numeric AS value,
       ((a.id * 31 + m.id * 17 + extract(doy FROM d)::int * 3) %% 100 = 0) AS faulty
FROM metering_account a CROSS JOIN metering_meter m
CROSS JOIN generate_series(%(start)s::timestamp, %(end)s::timestamp - interval '1 day',
                           interval '1 day') d;

INSERT INTO metering_rolluphourly (account_id, meter_id, dim_key, dim_value, hour, count, sum,
                                   max, latest_value, latest_at, latest_event_id, unique_count,
                                   folded)
SELECT account_id, meter_id, '', '', hour,
       CASE WHEN aggregation = 'count' THEN value ELSE 1 END, value, value, value, hour,
       account_id * 1000 + extract(doy FROM day)::int, 0, false
FROM bench_cells;

INSERT INTO metering_rollupdaily (account_id, meter_id, dim_key, dim_value, day, count, sum, max,
                                  latest_value, latest_at, latest_event_id, unique_count, folded)
SELECT account_id, meter_id, '', '', day,
       CASE WHEN aggregation = 'count' THEN value ELSE 1 END, value, value, value, hour,
       account_id * 1000 + extract(doy FROM day)::int, 0, false
FROM bench_cells;

INSERT INTO billing_pushledgerentry (provider, identifier, idempotency_key, kind, account_id,
    meter_id, value, timestamp, day, period_start, seq, payload, status, attempts, created_at,
    error_code, response)
SELECT 'simulated', 'b-' || account_id || '-' || meter_id || '-' || day,
       'b-' || account_id || '-' || meter_id || '-' || day, 'event', account_id, meter_id, value,
       hour, day, NULL, 0,
       jsonb_build_object('payload', jsonb_build_object('stripe_customer_id',
                                                        'sim_' || external_id)),
       'acknowledged', 1, now(), '', '{}'
FROM bench_cells WHERE aggregation IN ('count', 'sum');

-- max and latest: one period-to-date value per cell (the period's max / last day's value).
INSERT INTO billing_pushledgerentry (provider, identifier, idempotency_key, kind, account_id,
    meter_id, value, timestamp, day, period_start, seq, payload, status, attempts, created_at,
    error_code, response)
SELECT 'simulated', 'g-' || account_id || '-' || meter_id, 'g-' || account_id || '-' || meter_id,
       'period_to_date', account_id, meter_id,
       CASE WHEN aggregation = 'max' THEN max(value)
            ELSE (array_agg(value ORDER BY day DESC))[1] END,
       %(end)s::timestamptz - interval '1 second', (%(end)s::date - 1), %(start)s, 1,
       jsonb_build_object('payload', jsonb_build_object('stripe_customer_id',
                                                        'sim_' || min(external_id))),
       'acknowledged', 1, now(), '', '{}'
FROM bench_cells WHERE aggregation IN ('max', 'latest')
GROUP BY account_id, meter_id, aggregation;

INSERT INTO billing_providerusagesummary (provider, account_id, meter_id, provider_meter_id, day,
                                          value, pulled_at)
SELECT 'simulated', account_id, meter_id, 'sim_mtr_' || meter_id, day,
       CASE WHEN faulty THEN value - 1 ELSE value END, now()
FROM bench_cells WHERE aggregation IN ('count', 'sum');

-- A `last` meter's summary: the period-to-date value on the day it was sent.
INSERT INTO billing_providerusagesummary (provider, account_id, meter_id, provider_meter_id, day,
                                          value, pulled_at)
SELECT 'simulated', account_id, meter_id, 'sim_mtr_' || meter_id, day, value, now()
FROM billing_pushledgerentry WHERE kind = 'period_to_date';

ANALYZE;
"""


def seed(accounts: int) -> dict:
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from django.db import connection

    from billing.models import ProviderMeter
    from billing.services.plans import plan_create, price_add
    from metering.models import Meter

    end = datetime.now(UTC).date() - timedelta(days=1)
    start = end - timedelta(days=DAYS)
    plan = plan_create(code="bench", name="Bench", currency="USD")
    for code, aggregation, unit in METERS:
        meter = Meter.objects.create(
            code=code,
            name=code,
            aggregation=aggregation,
            value_property="" if aggregation == "count" else "v",
            unit=unit,
        )
        price_add(plan=plan, meter=meter, model="per_unit", unit_price=Decimal("0.01"))
        ProviderMeter.objects.create(
            provider="simulated",
            meter=meter,
            provider_meter_id=f"sim_mtr_{meter.pk}",
            event_name=f"mo_{code}",
            aggregation="sum" if aggregation in ("count", "sum") else "last",
        )
    with connection.cursor() as cursor:
        cursor.execute(SEED_SQL, {"n": accounts, "plan": plan.pk, "start": start, "end": end})
        cursor.execute(
            "SELECT count(DISTINCT (account_id, meter_id)) FROM bench_cells WHERE faulty "
            "AND aggregation IN ('count', 'sum')"
        )
        faulty_cells = cursor.fetchone()[0]
    return {"faulty_cells": faulty_cells}


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    if not args.reuse:
        recreate_database(args.database, maintenance)
    setup_django(url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    facts = {}
    if not args.reuse:
        started = time.monotonic()
        facts = seed(args.accounts)
        print(
            f"seeded {args.accounts:,} accounts × {len(METERS)} meters × {DAYS} days "
            f"in {time.monotonic() - started:.1f} s"
        )

    from reconciliation.models import Mismatch
    from reconciliation.services import reconciliation_run_all

    for label in ("first run", "second run (nothing changed)"):
        started = time.monotonic()
        total, _runs = reconciliation_run_all(pull=False, trigger="bench")
        wall = time.monotonic() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{label}: {total.accounts:,} accounts, {total.cells:,} cells in {wall:.1f} s = "
            f"{total.cells / wall:,.0f} cells/s; opened {total.opened:,}, updated "
            f"{total.updated:,}, resolved {total.resolved:,}; peak RSS {peak_mb:,.0f} MB"
        )
    open_count = Mismatch.objects.filter(status="open").count()
    if facts:
        print(
            f"cells with a seeded fault: {facts['faulty_cells']:,}; open mismatches: {open_count:,}"
        )
    else:
        print(f"open mismatches: {open_count:,}")


if __name__ == "__main__":
    main()
