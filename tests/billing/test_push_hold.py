"""The push and billing holds: a held account's usage is ingested, rolled up and kept, but not
sent, while other accounts push normally; a release sends exactly what was held, once.

Billing cannot import alerts: the push learns of holds through metering.account_holds, which
alerts fills from its AppConfig.ready. The tests drive holds through alerts' services, as
production does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerts.models import BillingHold
from alerts.services import billing_hold_open, billing_hold_release
from billing.models import PushLedgerEntry, SimulatedUsageRecord
from billing.providers import get_provider
from billing.services import push as push_service
from billing.services.push import usage_push
from metering.account_holds import held_account_ids
from metering.models import Meter, RolledUpEvent, UsageEvent
from metering.rollup_selectors import usage_series
from metering.services.ingest import events_ingest
from metering.services.rollups import rollup_drain
from tests.billing.test_push import hours_ago, make_event, stripe_total
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

N = 7


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def held():
    return AccountFactory(external_id="held-acme", name="Held Acme")


@pytest.fixture
def other():
    return AccountFactory(external_id="other-co", name="Other Co")


@pytest.fixture
def manager(django_user_model):
    user = django_user_model.objects.create_user("hold-manager", is_staff=True)
    user.groups.add(Group.objects.get(name="Manager"))
    return user


def ingest(account, meter, n: int, *, prefix: str, at: datetime | None = None) -> None:
    at = at or hours_ago(2)
    result = events_ingest(
        items=[
            {
                "transaction_id": f"{prefix}-{i}",
                "external_customer_id": account.external_id,
                "code": meter.code,
                "timestamp": (at + timedelta(seconds=i)).isoformat(),
            }
            for i in range(n)
        ],
        fmt="lago",
    )
    assert result.accepted == n
    rollup_drain()


def hold(account) -> BillingHold:
    return billing_hold_open(account=account, alert=None, at=datetime.now(UTC), reason="Spike")


def test_held_usage_is_kept_not_sent_then_released_exactly_once(fake, held, other, calls, manager):
    the_hold = hold(held)
    ingest(held, calls, N, prefix="h")
    ingest(other, calls, 3, prefix="o")

    first = usage_push()

    # Nothing of the held account reached the provider; the other account pushed normally.
    assert stripe_total(fake, held, calls) == 0
    assert stripe_total(fake, other, calls) == 3
    assert first.events_drained == 3
    assert RolledUpEvent.objects.filter(account_id=held.pk).count() == N
    assert not PushLedgerEntry.objects.filter(account=held).exists()
    # Still ingested, stored and rolled up (shown on every usage surface).
    assert UsageEvent.objects.filter(account=held).count() == N
    day = hours_ago(2).date()
    series = usage_series(
        account=held, meter=calls, start=day - timedelta(days=1), end=day + timedelta(days=2)
    )
    assert sum(p.value or 0 for p in series.points) == N

    billing_hold_release(hold=the_hold, actor=manager, reason="Customer confirmed")
    second = usage_push()
    third = usage_push()

    assert second.events_drained == N and second.acknowledged == N
    assert stripe_total(fake, held, calls) == N
    assert third.attempted == 0 and third.events_drained == 0
    assert stripe_total(fake, held, calls) == N
    assert stripe_total(fake, other, calls) == 3
    assert not RolledUpEvent.objects.exists()


def test_pending_entries_enqueued_before_the_hold_wait_for_the_release(
    settings, held, calls, manager
):
    settings.BILLING_PROVIDER = "simulated"
    for n in range(4):
        make_event(held, calls, Decimal(1), hours_ago(n + 1))
    push_service.push_ledger_enqueue(provider_name="simulated")
    the_hold = hold(held)

    result = usage_push(provider=get_provider("simulated"))

    assert result.attempted == 0
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {"pending"}
    assert not SimulatedUsageRecord.objects.exists()

    billing_hold_release(
        hold=the_hold, actor=manager, reason="OK", mode="push_and_credit", credit_amount_minor=100
    )
    released = usage_push(provider=get_provider("simulated"))
    again = usage_push(provider=get_provider("simulated"))

    assert released.acknowledged == 4 and again.attempted == 0
    assert SimulatedUsageRecord.objects.count() == 4


def test_gauge_meters_of_a_held_account_are_not_pushed_until_released(settings, held, manager):
    settings.BILLING_PROVIDER = "simulated"
    seats = MeterFactory(code="seats", aggregation=Meter.Aggregation.MAX, value_property="n")
    the_hold = hold(held)
    make_event(held, seats, Decimal(5), hours_ago(3))
    make_event(held, seats, Decimal(9), hours_ago(2))

    usage_push(provider=get_provider("simulated"))
    assert not PushLedgerEntry.objects.exists()

    billing_hold_release(hold=the_hold, actor=manager, reason="OK")
    usage_push(provider=get_provider("simulated"))

    (record,) = SimulatedUsageRecord.objects.all()
    assert record.value == 9


def test_the_held_accounts_are_read_once_per_batch_not_per_event(
    settings, held, other, calls, monkeypatch
):
    settings.BILLING_PROVIDER = "simulated"
    hold(held)
    ingest(held, calls, 20, prefix="h")
    ingest(other, calls, 20, prefix="o")
    asked = []
    from billing.services.push import enqueue, send

    def counting():
        asked.append(1)
        return held_account_ids()

    monkeypatch.setattr(enqueue, "held_account_ids", counting)
    monkeypatch.setattr(send, "held_account_ids", counting)

    with CaptureQueriesContext(connection) as queries:
        drained, created, _ = push_service.push_ledger_enqueue(
            provider_name="simulated", batch_size=10
        )

    assert (drained, created) == (20, 20)
    # Two full batches and the empty claim that ends the drain: three lookups, one query each.
    assert len(asked) == 3
    hold_queries = [q for q in queries.captured_queries if "alerts_billinghold" in q["sql"]]
    assert len(hold_queries) == 3

    asked.clear()
    push_service.push_ledger_send(provider=get_provider("simulated"), chunk=10)
    # Two chunks of ten and the empty read that ends the run.
    assert len(asked) == 3


def test_with_no_hold_source_nothing_is_held(monkeypatch, held):
    from metering import account_holds

    hold(held)
    assert held_account_ids() == {held.pk}
    monkeypatch.setattr(account_holds, "_sources", [])
    assert held_account_ids() == set()


def test_the_claim_steps_around_skipped_accounts_and_leaves_their_rows(db):
    from django.db import transaction

    from metering.services.rolled_up_feed import _ranges_between, rolled_up_events_claim

    RolledUpEvent.objects.bulk_create(
        RolledUpEvent(account_id=account_id, event_id=account_id * 100 + n)
        for account_id in (3, 5, 7, 9)
        for n in range(4)
    )
    assert _ranges_between([7, 5, 5])[1:] == [(6, 6), (8, 2**63 - 1)]

    with transaction.atomic():
        first = rolled_up_events_claim(limit=6, skip_accounts=[5, 7])
        rest = rolled_up_events_claim(limit=6, skip_accounts=[5, 7])
        none = rolled_up_events_claim(limit=6, skip_accounts=[3, 5, 7, 9])

    assert first == [300, 301, 302, 303, 900, 901]
    assert rest == [902, 903] and none == []
    left = sorted(RolledUpEvent.objects.values_list("account_id", flat=True).distinct())
    assert left == [5, 7] and RolledUpEvent.objects.count() == 8
