"""Benchmark: what a billing hold costs the push's claim from the rolled-up feed.

    uv run python bench/push_hold.py                       # held backlogs of 0, 100k, 1M rows
    uv run python bench/push_hold.py --held 0 250000 --others 50000

A held account's events stay in the rolled-up feed; each claim (DELETE ... RETURNING of 5,000
rows, metering.services.rolled_up_feed) must step over them. The feed rows carry no foreign
key, so the bench writes them directly with generate_series, in its own database
(`meterops_bench_push_hold`, recreated at each run): one held account (the lowest id, so its
rows sit first in the claim's key order) with --held rows, and 10 others with --others rows in
all. For each held size it times --batches claims of 5,000 (each rolled back, so every claim
sees the same feed) with the held account skipped, and prints the median milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402

HELD = 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--others", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--database", default="meterops_bench_push_hold")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    recreate_database(args.database, maintenance)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from metering.services.rolled_up_feed import rolled_up_events_claim

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        # 10 other accounts (ids 2..11), their events after the held account's.
        cursor.execute(
            "INSERT INTO metering_rolledupevent (account_id, event_id) "
            "SELECT 2 + (g %% 10), 10000000 + g FROM generate_series(1, %s) g",
            [args.others],
        )
    loaded = 0
    print(f"others: {args.others:,} feed rows in 10 accounts; claim batch 5,000")
    for held in sorted(args.held):
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO metering_rolledupevent (account_id, event_id) "
                "SELECT %s, g FROM generate_series(%s, %s) g",
                [HELD, loaded + 1, held],
            )
            cursor.execute("VACUUM ANALYZE metering_rolledupevent")
        loaded = max(loaded, held)
        times = []
        for _ in range(args.batches):
            with transaction.atomic():
                started = time.perf_counter()
                ids = rolled_up_events_claim(limit=5_000, skip_accounts=[HELD])
                times.append((time.perf_counter() - started) * 1000)
                assert len(ids) == 5_000 and min(ids) > 10_000_000, "claimed a held row"
                transaction.set_rollback(True)
        print(
            f"held backlog {held:>9,} rows: claim of 5,000 median {statistics.median(times):7.1f} ms"
            f" (min {min(times):.1f}, max {max(times):.1f})"
        )


if __name__ == "__main__":
    main()
