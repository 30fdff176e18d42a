"""Benchmark: push usage events through a platform adapter (its official SDK) to the suite's
fake server of that platform, and count the HTTP calls.

    uv run python bench/push.py                  # 10,000 events, Stripe's v2 meter event stream
    uv run python bench/push.py --events 50000
    uv run python bench/push.py --v1             # one v1 request per event, for comparison
    uv run python bench/push.py --provider orb   # Orb's /ingest (500 events per request)
    uv run python bench/push.py --provider lago  # Lago's /events/batch (100 per request)
    uv run python bench/push.py --provider metronome  # Metronome's /v1/ingest (100 per request)
    uv run python bench/push.py --provider amberflo   # Amberflo's /ingest (100 per request)

It works in its own database (`meterops_bench_push` on the server of $DATABASE_URL),
recreated at each run. Steps:

1. migrate; create the accounts and a count meter; insert the events and roll them up (the
   rollup drain puts them in the rolled-up feed the push reads, as in production);
2. start the platform's fake server (tests/billing/fake_stripe.py, tests/billing/fakes/) on
   127.0.0.1;
3. time one push run (`usage_push`): drain the feed into the ledger, then send every entry
   through the adapter and record each answer; the two phases are also timed alone;
4. print events/s and the HTTP calls per 10,000 events (v2: about 100 stream requests plus
   the meter event session, the customers and the meter), and check the fake counted every
   event exactly once.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument(
        "--provider", choices=["stripe", "orb", "lago", "metronome", "amberflo"], default="stripe"
    )
    parser.add_argument("--v1", action="store_true", help="Stripe: v1 meter events only")
    parser.add_argument("--database", default="meterops_bench_push")
    return parser.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ["BILLING_PROVIDER"] = "simulated"  # the bench passes its own adapter
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def seed(events: int, accounts: int) -> tuple[list, object]:
    from metering.models import Account, Meter, UsageEvent

    rows = Account.objects.bulk_create(
        [Account(external_id=f"push-{i:04d}", name=f"Push {i}") for i in range(accounts)]
    )
    meter = Meter.objects.create(code="api_calls", name="API calls", aggregation="count")
    now = datetime.now(UTC).replace(microsecond=0)
    batch = []
    for i in range(events):
        txn = f"p{i}"
        batch.append(
            UsageEvent(
                account=rows[i % accounts],
                meter=meter,
                transaction_id=txn,
                occurred_at=now - timedelta(hours=2, seconds=i),
                received_at=now,
                value=Decimal(1),
                properties={},
                content_hash=hashlib.sha256(txn.encode()).digest(),
            )
        )
    UsageEvent.objects.bulk_create(batch, batch_size=5000)
    from metering.services.rollups import rollup_drain

    rollup_drain()
    return rows, meter


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    recreate_database(args.database, maintenance)
    setup_django(url)

    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from billing.models import PushLedgerEntry
    from billing.services.push import push_ledger_enqueue, push_ledger_send

    started = time.perf_counter()
    accounts, _meter = seed(args.events, args.accounts)
    print(
        f"seeded {args.events:,} events for {args.accounts} accounts in "
        f"{time.perf_counter() - started:.1f}s"
    )

    fake, adapter, counted_for, mode = platform(args)
    try:
        t0 = time.perf_counter()
        drained, created, _ = push_ledger_enqueue(provider_name=adapter.name)
        t1 = time.perf_counter()
        result = push_ledger_send(provider=adapter)
        t2 = time.perf_counter()
    finally:
        fake.stop()

    total = t2 - t0
    by_path: dict[str, int] = {}
    for request in fake.requests:
        key = f"{request['method']} {request['path']}"
        by_path[key] = by_path.get(key, 0) + 1
    counted = sum(counted_for(a) for a in type(accounts[0]).objects.all())
    done = PushLedgerEntry.objects.filter(status__in=["sent", "acknowledged"]).count()
    per_10k = fake.request_count * 10_000 / args.events

    print(f"provider: {adapter.name}; mode: {mode}")
    print(
        f"enqueue (feed -> ledger): {drained:,} events, {created:,} entries in {t1 - t0:.2f}s "
        f"({drained / (t1 - t0):,.0f} events/s)"
    )
    print(
        f"send (adapter -> fake {adapter.name}, answers recorded): {result.attempted:,} entries in "
        f"{t2 - t1:.2f}s ({result.attempted / (t2 - t1):,.0f} events/s)"
    )
    print(f"push end to end: {args.events / total:,.0f} events/s")
    print(f"HTTP calls: {fake.request_count:,} in all = {per_10k:,.0f} per 10,000 events")
    for key, count in sorted(by_path.items()):
        print(f"  {count:>6,}  {key}")
    print(
        f"ledger sent/acknowledged: {done:,}; counted by the fake: {counted:,} "
        f"({'exact' if counted == args.events == done else 'MISMATCH'})"
    )


def platform(args):
    """(fake server, adapter, counted(account), mode) for --provider."""
    if args.provider == "orb":
        from billing.providers.orb import OrbProvider
        from tests.billing.fakes.orb import FakeOrb

        fake = FakeOrb()
        adapter = OrbProvider(api_key=fake.api_key, api_base=fake.start())

        def counted(account):
            return fake.total(event_name="mo_api_calls", customer=account.external_id)

        return fake, adapter, counted, f"/ingest, {adapter.batch_size} events per request"
    if args.provider == "lago":
        from billing.providers.lago import LagoProvider
        from tests.billing.fakes.lago import FakeLago

        fake = FakeLago()
        adapter = LagoProvider(api_key=fake.api_key, api_url=fake.start())

        def counted(account):
            return fake.total(code="mo_api_calls", subscription=account.external_id)

        return fake, adapter, counted, f"/events/batch, {adapter.batch_size} events per request"
    if args.provider == "metronome":
        from billing.providers.metronome import MetronomeProvider
        from tests.billing.fakes.metronome import FakeMetronome

        fake = FakeMetronome()
        adapter = MetronomeProvider(api_key=fake.api_key, api_base=fake.start())

        def counted(account):
            return fake.total(event_type="mo_api_calls", alias=account.external_id)

        return fake, adapter, counted, f"/v1/ingest, {adapter.batch_size} events per request"
    if args.provider == "amberflo":
        from billing.providers.amberflo import AmberfloProvider
        from tests.billing.fakes.amberflo import FakeAmberflo

        fake = FakeAmberflo()
        adapter = AmberfloProvider(api_key=fake.api_key, base_url=fake.start())

        def counted(account):
            return fake.total(meter="mo_api_calls", customer=account.external_id)

        return fake, adapter, counted, f"/ingest, {adapter.batch_size} records per request"
    from billing.providers.stripe import StripeProvider
    from tests.billing.fake_stripe import FakeStripe

    fake = FakeStripe()
    adapter = StripeProvider(
        api_key=fake.api_key, api_base=fake.start(), v2_threshold=10**9 if args.v1 else 10
    )

    def counted(account):
        return fake.total(event_name="mo_api_calls", customer=account.provider_customer_id)

    mode = "v1 meter events" if args.v1 else "v2 meter event stream (100 per request)"
    return fake, adapter, counted, mode


if __name__ == "__main__":
    main()
