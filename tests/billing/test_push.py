"""Pushing usage through the ledger: exactly once, across crashes, retries and Stripe's windows.

The provider is the real Stripe adapter (and SDK) against the fake Stripe server, or the
simulated provider.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection

from billing.models import ProviderMeter, PushInstallation, PushLedgerEntry
from billing.providers import get_provider
from billing.services import push as push_service
from billing.services.push import send as push_send
from billing.services.push import usage_push
from billing.tasks import billing_provider_pull, billing_usage_push
from metering.models import Meter, RolledUpEvent, UsageEvent
from metering.services.ingest import events_ingest
from metering.services.rollups import rollup_drain
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status
_txn = itertools.count(1)


def make_event(account, meter, value, at, *, corrects=None, unique_value="", drain=True):
    """A stored usage event, rolled up (the drain puts it in the rolled-up feed the push reads)."""
    transaction_id = f"t-{next(_txn)}"
    event = UsageEvent.objects.create(
        account=account,
        meter=meter,
        transaction_id=transaction_id,
        occurred_at=at,
        received_at=datetime.now(UTC),
        value=value,
        unique_value=unique_value,
        properties={},
        content_hash=hashlib.sha256(transaction_id.encode()).digest(),
        kind=UsageEvent.Kind.CORRECTION if corrects else UsageEvent.Kind.NORMAL,
        corrects=corrects,
    )
    if drain:
        rollup_drain()
    return event


def make_events(account, meter, value, times) -> list:
    """Many stored events, rolled up by one drain: a drain per event inside a test's
    transaction keeps every drain's temporary tables locked until the test ends, and a few
    hundred of them exhaust PostgreSQL's shared lock table when two test workers run."""
    events = [make_event(account, meter, value, at, drain=False) for at in times]
    rollup_drain()
    return events


def hours_ago(n: float) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=n)).replace(microsecond=0)


@pytest.fixture
def account():
    return AccountFactory(external_id="push-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def stripe_total(fake, account, meter) -> Decimal:
    account.refresh_from_db()
    return fake.total(event_name=f"mo_{meter.code}", customer=account.provider_customer_id)


class Crash(RuntimeError):
    pass


def crash_after_answer(monkeypatch):
    """Stripe answers, then the process dies inside the transaction that records the answer."""
    original = push_send._record_results

    def record_then_crash(entries, results, now):
        original(entries, results, now)
        raise Crash("killed before the ledger committed")

    monkeypatch.setattr(push_send, "_record_results", record_then_crash)


# --- the basics ---------------------------------------------------------------------------------


def test_each_event_is_pushed_once_and_acknowledged(fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(n + 1) for n in range(3)])

    result = usage_push()

    assert result.events_drained == 3 and result.acknowledged == 3
    assert stripe_total(fake, account, calls) == 3
    # By event: the ledger's insert order follows the events' places on disk, not their ids.
    entries = PushLedgerEntry.objects.order_by("event_id")
    assert {e.status for e in entries} == {Status.ACKNOWLEDGED}
    event_ids = UsageEvent.objects.order_by("pk").values_list("pk", flat=True)
    prefix = PushInstallation.objects.get().installation_id
    assert [e.identifier for e in entries] == [f"mo-{prefix}-e{pk}" for pk in event_ids]
    assert all(e.payload["identifier"] == e.identifier and e.attempts == 1 for e in entries)
    assert not RolledUpEvent.objects.exists()
    pm = ProviderMeter.objects.get(meter=calls, provider="stripe")
    assert fake.meters[pm.provider_meter_id]["default_aggregation"]["formula"] == "sum"


def test_an_ingested_event_reaches_the_push_ledger_only_after_the_rollup_drain(account, calls):
    ingested = events_ingest(
        items=[
            {
                "transaction_id": "drain-first",
                "external_customer_id": account.external_id,
                "code": calls.code,
                "timestamp": hours_ago(1).isoformat(),
            }
        ],
        fmt="lago",
    )
    assert ingested.accepted == 1

    before = usage_push()

    assert before.events_drained == 0
    assert not PushLedgerEntry.objects.exists()

    rollup_drain()
    after = usage_push()

    assert after.events_drained == 1
    prefix = PushInstallation.objects.get().installation_id
    assert PushLedgerEntry.objects.get().identifier == f"mo-{prefix}-e{UsageEvent.objects.get().pk}"


def test_a_second_run_sends_nothing_again(fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    before = len(fake.calls("/v1/billing/meter_events"))

    again = usage_push()

    assert again.attempted == 0
    assert len(fake.calls("/v1/billing/meter_events")) == before
    assert stripe_total(fake, account, calls) == 1


def test_usage_older_than_35_days_is_recorded_too_old_and_never_sent(fake, account, calls):
    make_event(account, calls, Decimal(1), datetime.now(UTC) - timedelta(days=36))
    make_event(account, calls, Decimal(1), hours_ago(1))

    result = usage_push()

    old = PushLedgerEntry.objects.get(timestamp__lt=datetime.now(UTC) - timedelta(days=35))
    assert old.status == Status.TOO_OLD
    assert old.attempts == 0 and old.first_sent_at is None
    assert "35 days" in old.response["reason"]
    assert result.too_old == 1 and result.acknowledged == 1
    assert len(fake.calls("/v1/billing/meter_events")) == 1
    assert stripe_total(fake, account, calls) == 1


def test_a_pending_entry_that_aged_past_35_days_becomes_too_old(fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    push_service.push_ledger_enqueue(provider_name="stripe")
    PushLedgerEntry.objects.update(timestamp=datetime.now(UTC) - timedelta(days=35, hours=1))

    result = usage_push()

    assert result.too_old == 1
    assert PushLedgerEntry.objects.get().status == Status.TOO_OLD
    assert fake.calls("/v1/billing/meter_events") == []


def test_a_correction_pushes_the_difference_it_makes(fake, account, storage):
    original = make_event(account, storage, Decimal("10.5"), hours_ago(2))
    usage_push()
    make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)
    voided = make_event(account, storage, Decimal("2"), hours_ago(1))
    make_event(account, storage, None, voided.occurred_at, corrects=voided)

    usage_push()

    rows = list(PushLedgerEntry.objects.order_by("pk").values_list("value", "status"))
    assert rows == [
        (Decimal("10.5"), Status.ACKNOWLEDGED),
        (Decimal("-3.5"), Status.ACKNOWLEDGED),  # the provider held 10.5: the difference
        (Decimal("2"), Status.SUPERSEDED),  # voided before it was ever sent: not sent
        (Decimal("0"), Status.SUPERSEDED),  # and nothing to take back
    ]
    assert stripe_total(fake, account, storage) == Decimal(7)


def test_rate_limited_requests_are_retried_until_stripe_takes_them(fake, account, calls):
    fake.rate_limit_every = 3
    make_events(account, calls, Decimal(1), [hours_ago(n + 1) for n in range(6)])

    result = usage_push()

    assert result.acknowledged == 6
    assert any(c["status"] == 429 for c in fake.requests)
    assert stripe_total(fake, account, calls) == 6


def test_many_events_go_through_the_v2_stream_in_requests_of_100(fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 100) for n in range(250)])

    result = usage_push()

    assert result.sent == 250
    sizes = [c["body"].count(b'"identifier"') for c in fake.calls("/v2/billing/meter_event_stream")]
    assert sizes == [100, 100, 50]
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.SENT}
    assert stripe_total(fake, account, calls) == 250


# --- crashes and Stripe's 24-hour window ------------------------------------------------------


@pytest.mark.parametrize("events", [3, 150], ids=["v1", "v2-stream"])
def test_a_push_killed_after_stripe_answered_is_counted_once_after_the_rerun(
    fake, account, storage, monkeypatch, events
):
    make_events(account, storage, Decimal("1.5"), [hours_ago(1 + n / 100) for n in range(events)])
    crash_after_answer(monkeypatch)

    with pytest.raises(Crash):
        usage_push()

    pending = PushLedgerEntry.objects.filter(status=Status.PENDING)
    assert pending.count() == events  # the answers were never recorded
    assert all(e.attempts == 1 and e.first_sent_at for e in pending)
    assert stripe_total(fake, account, storage) == Decimal("1.5") * events  # Stripe has it
    monkeypatch.undo()

    rerun = usage_push()

    assert rerun.attempted == events
    assert not PushLedgerEntry.objects.filter(status=Status.PENDING).exists()
    assert stripe_total(fake, account, storage) == Decimal("1.5") * events  # still once
    assert all(fake.count_identifier(e.identifier) == 1 for e in PushLedgerEntry.objects.all())
    usage_calls = fake.calls("/v1/billing/meter_events") + fake.calls(
        "/v2/billing/meter_event_stream"
    )
    keys = [c["idempotency_key"] for c in usage_calls]
    half = len(keys) // 2
    assert keys[:half] == keys[half:]  # the rerun sent the same requests under the same keys
    assert [c["body"] for c in usage_calls[:half]] == [c["body"] for c in usage_calls[half:]]


def test_after_24_hours_a_counted_pending_entry_is_confirmed_from_the_summary_not_resent(
    fake, account, storage, monkeypatch
):
    make_event(account, storage, Decimal("4"), hours_ago(30))
    make_event(account, storage, Decimal("6"), hours_ago(30))
    crash_after_answer(monkeypatch)
    with pytest.raises(Crash):
        usage_push()
    monkeypatch.undo()
    # A day passes: Stripe forgets the identifiers; a resend now would count twice.
    fake.advance(25 * 3600)
    PushLedgerEntry.objects.update(first_sent_at=datetime.now(UTC) - timedelta(hours=25))
    sent_before = len(fake.calls("/v1/billing/meter_events"))

    result = usage_push(now=datetime.now(UTC) + timedelta(hours=1))

    assert result.stale_acknowledged == 2 and result.stale_resent == 0
    assert len(fake.calls("/v1/billing/meter_events")) == sent_before
    assert stripe_total(fake, account, storage) == Decimal(10)
    entry = PushLedgerEntry.objects.first()
    assert entry.status == Status.ACKNOWLEDGED
    assert entry.response["counted"] is True
    assert entry.response["provider_day_total"] == "10"


def test_after_24_hours_a_pending_entry_stripe_never_got_is_resent_once(fake, account, storage):
    make_event(account, storage, Decimal("5"), hours_ago(30))
    push_service.push_ledger_enqueue(provider_name="stripe")
    # Attempted (committed) but the request never reached Stripe, a day ago.
    PushLedgerEntry.objects.update(
        attempts=1, first_sent_at=datetime.now(UTC) - timedelta(hours=25)
    )

    result = usage_push()

    assert result.stale_resent == 1
    assert PushLedgerEntry.objects.get().status == Status.ACKNOWLEDGED
    assert stripe_total(fake, account, storage) == Decimal(5)


def test_after_24_hours_an_ambiguous_day_goes_to_a_person(fake, account, storage, monkeypatch):
    make_event(account, storage, Decimal("5"), hours_ago(30))
    make_event(account, storage, Decimal("7"), hours_ago(30))
    crash_after_answer(monkeypatch)
    with pytest.raises(Crash):
        usage_push(max_entries=1)  # only the first reached Stripe
    monkeypatch.undo()
    PushLedgerEntry.objects.update(
        attempts=1, first_sent_at=datetime.now(UTC) - timedelta(hours=25)
    )
    fake.advance(25 * 3600)

    result = usage_push(now=datetime.now(UTC) + timedelta(hours=1))

    assert result.stale_failed == 2
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.FAILED}
    assert stripe_total(fake, account, storage) == Decimal(5)  # nothing resent blindly


def test_a_second_run_while_one_holds_the_lock_does_nothing(fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    settings_dict = connection.settings_dict
    other = psycopg.connect(
        dbname=settings_dict["NAME"],
        user=settings_dict["USER"],
        host=settings_dict["HOST"],
        port=settings_dict["PORT"] or 5432,
        autocommit=True,
    )
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [push_service.PUSH_LOCK_KEY])
        busy = usage_push()
    finally:
        other.close()

    assert busy.busy is True
    assert fake.requests == []
    assert usage_push().acknowledged == 1


# --- period-to-date meters (max, unique_count, latest) -> Stripe `last` meters -------------------


def test_max_meter_pushes_period_to_date_values_to_a_last_meter(fake, account):
    peak = MeterFactory(code="peak", aggregation=Meter.Aggregation.MAX, value_property="gb")
    for value in ("5", "9.25", "3"):
        make_event(account, peak, Decimal(value), hours_ago(2))

    usage_push()
    make_event(account, peak, Decimal("4"), hours_ago(1))  # below the max: nothing new
    usage_push()
    make_event(account, peak, Decimal("12"), hours_ago(1))
    usage_push()

    entries = list(PushLedgerEntry.objects.order_by("seq"))
    assert [(e.seq, e.value, e.kind) for e in entries] == [
        (1, Decimal("9.25"), "period_to_date"),
        (2, Decimal("12"), "period_to_date"),
    ]
    assert entries[0].timestamp < entries[1].timestamp
    pm = ProviderMeter.objects.get(meter=peak)
    assert pm.aggregation == "last"
    assert fake.meters[pm.provider_meter_id]["default_aggregation"]["formula"] == "last"
    assert stripe_total(fake, account, peak) == Decimal(12)


def test_unique_count_meter_pushes_the_distinct_count_of_the_period(fake, account):
    users = MeterFactory(code="users", aggregation=Meter.Aggregation.UNIQUE_COUNT)
    for user in ("ann", "bob", "ann", "cy"):
        make_event(account, users, None, hours_ago(1), unique_value=user)

    usage_push()

    assert PushLedgerEntry.objects.get().value == Decimal(3)
    assert stripe_total(fake, account, users) == Decimal(3)


def test_an_older_unsent_period_to_date_value_is_superseded(fake, account):
    latest = MeterFactory(code="seats", aggregation=Meter.Aggregation.LATEST, value_property="n")
    make_event(account, latest, Decimal("3"), hours_ago(2))
    push_service.push_ledger_enqueue(provider_name="stripe")
    make_event(account, latest, Decimal("8"), hours_ago(1))

    result = usage_push()

    assert result.superseded == 1
    statuses = list(PushLedgerEntry.objects.order_by("seq").values_list("status", flat=True))
    assert statuses == [Status.SUPERSEDED, Status.ACKNOWLEDGED]
    assert stripe_total(fake, account, latest) == Decimal(8)


# --- simulated provider, tasks, admin ------------------------------------------------------------


def test_the_simulated_provider_is_the_default_and_records_in_the_database(
    settings, account, calls
):
    settings.BILLING_PROVIDER = "simulated"
    make_event(account, calls, Decimal(1), hours_ago(1))

    result = usage_push()

    assert result.provider == "simulated" and result.acknowledged == 1
    from billing.models import SimulatedUsageRecord

    record = SimulatedUsageRecord.objects.get()
    assert record.customer_id == "sim_push-acme"
    assert record.value == 1


def test_the_tasks_run_the_push_and_the_pull_and_are_scheduled(settings, account, calls):
    settings.BILLING_PROVIDER = "simulated"
    make_event(account, calls, Decimal(1), hours_ago(1))

    pushed = billing_usage_push.apply().get()
    pushed_again = billing_usage_push.apply().get()
    pulled = billing_provider_pull.apply().get()

    assert pushed["acknowledged"] == 1 and pushed_again["attempted"] == 0
    assert pulled["summaries_stored"] == 1
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["billing-usage-push"]["task"] == "billing.tasks.billing_usage_push"
    assert str(schedule["billing-usage-push"]["schedule"]._orig_minute) == "*"
    assert schedule["billing-provider-pull"]["task"] == "billing.tasks.billing_provider_pull"
    assert billing_usage_push.acks_late and billing_provider_pull.acks_late


def test_the_ledger_admin_lists_entries_in_bounded_queries(
    settings, admin_client, account, calls, django_assert_max_num_queries
):
    settings.BILLING_PROVIDER = "simulated"
    make_events(account, calls, Decimal(1), [hours_ago(n + 1) for n in range(5)])
    usage_push()

    with django_assert_max_num_queries(12):
        response = admin_client.get("/admin/billing/pushledgerentry/")

    assert response.status_code == 200
    assert b"-e" in response.content
    entry = PushLedgerEntry.objects.first()
    detail = admin_client.get(f"/admin/billing/pushledgerentry/{entry.pk}/change/")
    assert detail.status_code == 200 and b"stripe_customer_id" in detail.content


def test_staff_can_send_failed_entries_again(settings, admin_client, account, calls):
    settings.BILLING_PROVIDER = "simulated"
    make_event(account, calls, Decimal(1), hours_ago(1))
    push_service.push_ledger_enqueue(provider_name="simulated")
    entry = PushLedgerEntry.objects.get()
    PushLedgerEntry.objects.update(status=Status.FAILED)

    response = admin_client.post(
        "/admin/billing/pushledgerentry/",
        {"action": "send_again", "_selected_action": [entry.pk]},
    )
    result = usage_push(provider=get_provider("simulated"))

    assert response.status_code == 302
    assert result.acknowledged == 1
    entry.refresh_from_db()
    assert entry.status == Status.ACKNOWLEDGED


@pytest.mark.parametrize(
    "model",
    [
        "providermeter",
        "pushledgerentry",
        "providerusagesummary",
        "providerinvoice",
        "webhookevent",
        "simulatedfaultconfig",
        "simulatedusagerecord",
        "pushledgerchange",
        "pushbatch",
    ],
)
def test_every_provider_admin_page_opens(settings, admin_client, account, calls, model):
    settings.BILLING_PROVIDER = "simulated"
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()

    response = admin_client.get(f"/admin/billing/{model}/")

    assert response.status_code == 200
