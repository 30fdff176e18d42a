"""The proof against the Stripe adapter (the real `stripe` SDK) and the suite's fake Stripe
server: usage pushed through the ledger, then faults injected at the fake server (events
dropped, duplicated, moved two hours earlier; a customer remapped), then reconciled.

UTC accounts in the proof; a Kolkata period is read over its exact bounds (Stripe's summary
without a grouping window, minute-aligned), tested on its own below.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from metering.models import Meter
from reconciliation.models import Mismatch
from reconciliation.services import reconciliation_run_all
from tests.billing.fake_stripe import FakeStripe
from tests.metering.rollup_support import event
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    today,
)
from tests.reconciliation.support import (
    usage_for as usage,
)

pytestmark = pytest.mark.django_db

GROUPS = {
    "clean": None,
    "drop": "provider_missing",
    "duplicate": "provider_extra",
    "skew": "day_shift",
    "unmapped": "customer_mapping",
}
PER_GROUP = 3


def _inject(fake: FakeStripe, group: str, customers: set[str]) -> None:
    mine = [i for i, e in enumerate(fake.events) if e.customer in customers]
    with fake.lock:
        if group == "drop":
            for i in sorted(mine[::5], reverse=True):
                del fake.events[i]
        elif group == "duplicate":
            fake.events.extend(replace(fake.events[i]) for i in mine[::5])
        elif group == "skew":
            for i in mine[::2]:
                fake.events[i] = replace(fake.events[i], timestamp=fake.events[i].timestamp - 7200)


def _truth(fake, account, meter, period) -> Decimal:
    lo, hi = int(period.starts_at.timestamp()), int(period.ends_at.timestamp())
    rows = sorted(
        (
            e
            for e in fake.events
            if e.customer == account.provider_customer_id
            and e.event_name == f"mo_{meter.code}"
            and lo <= e.timestamp < hi
        ),
        key=lambda e: e.timestamp,
    )
    events = account.events.filter(
        meter=meter, occurred_at__gte=period.starts_at, occurred_at__lt=period.ends_at
    )
    if meter.aggregation == Meter.Aggregation.MAX:
        ours = max((e.value for e in events), default=Decimal(0))
        return ours - (rows[-1].value if rows else Decimal(0))
    ours = sum((e.value or Decimal(1) for e in events), Decimal(0))
    return ours - sum((e.value for e in rows), Decimal(0))


def test_faults_at_the_fake_stripe_server_are_found_with_their_cause(fake):
    from billing.services.push import usage_push

    meters = meters_count_sum_max()
    plan = plan_for(meters)
    start, end = today() - timedelta(days=32), today() - timedelta(days=2)
    cells = []
    for group, expected in GROUPS.items():
        for n in range(PER_GROUP):
            account, period = account_with_period(
                external_id=f"{group}-{n}", tz="UTC", plan=plan, start=start, end=end
            )
            ingest([e for m in meters for e in usage(account, m, period, per_day=2)])
            cells.extend((group, expected, account, m, period) for m in meters)
    pushed = usage_push()
    assert pushed.sent + pushed.acknowledged > 0 and not pushed.failed
    for group in GROUPS:
        accounts = {c[2] for c in cells if c[0] == group}
        for account in accounts:
            account.refresh_from_db()
        _inject(fake, group, {a.provider_customer_id for a in accounts})
        if group == "unmapped":
            for account in accounts:
                account.provider_customer_id = fake.add_customer(name=account.name)
                account.save()

    total, _runs = reconciliation_run_all(pull=True, trigger="test")

    assert total.cells == len(cells) == 45
    flagged = {(m.account_id, m.meter_id): m for m in Mismatch.objects.filter(status="open")}
    missed, false_alarms, wrong, faulty = [], [], [], 0
    for group, expected, account, meter, period in cells:
        account.refresh_from_db()
        truth = _truth(fake, account, meter, period)
        mismatch = flagged.get((account.pk, meter.pk))
        if truth:
            faulty += 1
            if mismatch is None:
                missed.append((group, account.external_id, meter.code, truth))
            elif mismatch.delta != truth or mismatch.top_cause != expected:
                wrong.append(
                    (group, meter.code, str(mismatch.delta), str(truth), mismatch.cause_codes)
                )
        elif mismatch is not None:
            false_alarms.append((group, account.external_id, meter.code, mismatch.cause_codes))

    print(f"\ncells {len(cells)}, faulty {faulty}, flagged {len(flagged)}, wrong {wrong}")
    assert not missed, missed
    assert not false_alarms, false_alarms
    assert faulty >= 20
    assert len(wrong) <= len(flagged) * Decimal("0.1"), wrong


def test_a_kolkata_period_is_read_against_stripe_over_its_exact_bounds(fake):
    """A period cut at Kolkata midnights (18:30 UTC) is read with one summary over its exact
    bounds (no grouping window, minute-aligned): Stripe's usage of the next period on the same
    UTC day is not counted in it, and an event Stripe lost is found exactly."""
    from billing.services.push import usage_push

    meters = meters_count_sum_max()
    account, period = account_with_period(
        external_id="kolkata",
        tz="Asia/Kolkata",
        plan=plan_for(meters),
        start=today() - timedelta(days=32),
        end=today() - timedelta(days=2),
    )
    # Usage of the next period too, on the UTC day this one ends in (its end is 18:30 UTC).
    next_period = event(account, meters[0], period.ends_at + timedelta(minutes=30))
    ingest([e for m in meters for e in usage(account, m, period, per_day=1)] + [next_period])
    usage_push()
    account.refresh_from_db()
    customer = account.provider_customer_id
    lo, hi = int(period.starts_at.timestamp()), int(period.ends_at.timestamp())
    assert hi % 86_400 == 66_600  # 18:30 UTC
    assert fake.total(event_name="mo_calls", customer=customer) == 30 + 3 + 1
    with fake.lock:
        # One event of this period lost by Stripe.
        lost = next(
            i
            for i, e in enumerate(fake.events)
            if e.customer == customer
            and e.event_name == "mo_calls"
            and lo + 10 * 86_400 <= e.timestamp < hi
        )
        del fake.events[lost]

    total, _runs = reconciliation_run_all(pull=True, trigger="test")

    assert total.cells == 3 and total.opened == 1
    mismatch = Mismatch.objects.get()
    assert (mismatch.meter.code, mismatch.delta, mismatch.top_cause) == (
        "calls",
        1,
        "provider_missing",
    )
    exact = [r for r in fake.summary_requests if r[4] is None]
    assert sorted(r[2:4] for r in exact) == [(lo, hi)] * 3
    assert all(r[2] % 86_400 == r[3] % 86_400 == 0 for r in fake.summary_requests if r[4])


def test_a_second_run_pulls_only_what_can_have_changed_and_still_finds_new_gaps(fake):
    """After a pull, only ledger entries completed since (less Stripe's hour of processing)
    can change what Stripe holds: a second run re-reads those cells from the day of their
    oldest such entry, skips the rest, and still finds the gap the new usage opened."""
    from django.utils import timezone

    from billing.models import PushLedgerEntry
    from billing.services.push import usage_push

    meters = meters_count_sum_max()
    plan = plan_for(meters)
    cells = {}
    for name in ("steady", "busy"):
        account, period = account_with_period(
            external_id=name,
            tz="UTC",
            plan=plan,
            start=today() - timedelta(days=32),
            end=today() - timedelta(days=2),
        )
        ingest([e for m in meters for e in usage(account, m, period, per_day=1)])
        cells[name] = (account, period)
    usage_push()
    # Pushed long ago: Stripe has processed all of it.
    PushLedgerEntry.objects.update(completed_at=timezone.now() - timedelta(hours=2))

    first, _runs = reconciliation_run_all(pull=True, trigger="test")
    first_requests = len(fake.summary_requests)

    assert (first.cells, first.opened, first.pulled, first.pull_skipped) == (6, 0, 6, 0)
    assert first_requests == 6

    # New usage for one account, pushed now, and lost by Stripe.
    account, period = cells["busy"]
    at = period.starts_at + timedelta(days=10, hours=5)
    ingest([event(account, meters[0], at)])
    usage_push()
    account.refresh_from_db()
    with fake.lock:
        fake.events[:] = [
            e
            for e in fake.events
            if not (e.customer == account.provider_customer_id and e.timestamp == at.timestamp())
        ]

    second, _runs = reconciliation_run_all(pull=True, trigger="test")

    assert (second.pulled, second.pull_skipped) == (1, 5)
    new_requests = fake.summary_requests[first_requests:]
    assert [r[2:] for r in new_requests] == [
        (
            int(at.replace(hour=0).timestamp()),
            int((period.ends_at + timedelta(days=1)).timestamp()),
            "day",
        )
    ]
    assert second.opened == 1
    mismatch = Mismatch.objects.get()
    assert (mismatch.period, mismatch.meter, mismatch.delta) == (period, meters[0], 1)
    assert mismatch.top_cause == "provider_missing"

    # A third run with nothing new pulls nothing and keeps the mismatch.
    PushLedgerEntry.objects.update(completed_at=timezone.now() - timedelta(hours=2))
    third, _runs = reconciliation_run_all(pull=True, trigger="test")
    assert (third.pulled, third.pull_skipped, third.resolved) == (0, 6, 0)
    assert len(fake.summary_requests) == first_requests + 1
