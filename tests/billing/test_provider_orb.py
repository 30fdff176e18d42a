"""The Orb adapter (the official `orb-billing` SDK) against the suite's fake Orb server
(tests/billing/fakes/orb.py): pushed exactly once through the ledger, across Orb's grace
period, its validation answers, rate limits and a process killed after Orb answered; read back
per UTC day; invoices, the upcoming-invoice preview and credits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from billing.models import ProviderInvoice, ProviderMeter, ProviderUsageSummary, PushLedgerEntry
from billing.providers import get_provider, platform_rules
from billing.providers.base import (
    CreditRequest,
    CreditRoute,
    MeterSpec,
    ProviderMisconfigured,
    UsageItem,
)
from billing.providers.orb import OrbProvider, json_number
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.fakes.orb import FakeOrb
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def account():
    return AccountFactory(external_id="orb-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def ingested_keys(fake: FakeOrb) -> list[str]:
    import json

    return [
        e["idempotency_key"]
        for call in fake.calls("/v1/ingest")
        if call["status"] == 200
        for e in json.loads(call["body"])["events"]
    ]


# --- pushing -------------------------------------------------------------------------------------


def test_each_event_is_ingested_once_with_its_idempotency_key_and_acknowledged(
    orb_fake, account, storage
):
    for n in range(3):
        make_event(account, storage, Decimal("1.5") + n, hours_ago(n + 1))

    result = usage_push()

    assert result.provider == "orb" and result.acknowledged == 3 and not result.failed
    entries = list(PushLedgerEntry.objects.order_by("pk"))
    assert {e.status for e in entries} == {Status.ACKNOWLEDGED}
    # Orb's key is our identifier; the customer is matched by our external id, made in UTC.
    assert sorted(orb_fake.keys) == sorted(e.identifier for e in entries)
    customer = next(iter(orb_fake.customers.values()))
    assert customer["external_customer_id"] == "orb-acme" and customer["timezone"] == "UTC"
    assert orb_fake.total(event_name="mo_storage", customer="orb-acme") == Decimal("7.5")
    metric = orb_fake.metric_by_event("mo_storage")
    assert metric["sql"] == "SELECT SUM(value) FROM events WHERE event_name = 'mo_storage'"
    mapping = ProviderMeter.objects.get(provider="orb", meter=storage)
    assert mapping.provider_meter_id == metric["id"]
    assert account.provider_customer_id == ""  # nothing stored: the external id is the key

    again = usage_push()
    assert again.attempted == 0 and len(orb_fake.calls("/v1/ingest")) == 1


def test_a_resend_of_a_counted_event_is_answered_duplicate_and_counted_once(
    orb_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    entry = PushLedgerEntry.objects.get()
    # As if the answer had been lost: pending again, first sent two days ago (past Stripe's
    # 24 hours; Orb keeps keys for good, so the ledger simply sends it again).
    PushLedgerEntry.objects.filter(pk=entry.pk).update(
        status=Status.PENDING, first_sent_at=datetime.now(UTC) - timedelta(days=2)
    )

    result = usage_push()

    entry.refresh_from_db()
    assert result.attempted == 1 and result.stale_resent == 0
    assert entry.status == Status.ACKNOWLEDGED and entry.response["result"] == "duplicate"
    assert orb_fake.count_key(entry.identifier) == 1
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 1


def backfill_ingests(fake: FakeOrb) -> list[dict]:
    return [c for c in fake.calls("/v1/ingest") if c["query"].get("backfill_id")]


def test_usage_past_the_grace_period_goes_by_a_backfill_and_counts_once_reflected(
    orb_fake, account, calls
):
    late = make_event(account, calls, Decimal(1), hours_ago(13))  # grace period 12 hours
    make_event(account, calls, Decimal(1), hours_ago(1))

    result = usage_push()

    by_event = {e.event_id: e for e in PushLedgerEntry.objects.all()}
    backfilled = by_event.pop(late.pk)
    assert [e.status for e in by_event.values()] == [Status.ACKNOWLEDGED]
    # Sent, not acknowledged: Orb reflects a closed backfill asynchronously.
    assert backfilled.status == Status.SENT and result.sent == 1 and result.too_old == 0
    (backfill,) = orb_fake.backfills.values()
    assert backfilled.response["backfill_id"] == backfill["id"]
    assert backfilled.response["backfill_closed"] is True
    assert backfill["external"] == "orb-acme" and backfill["replace_existing_events"] is False
    assert backfill["timeframe_start"] <= backfilled.timestamp.timestamp()
    assert backfilled.timestamp.timestamp() < backfill["timeframe_end"]
    (ingest,) = backfill_ingests(orb_fake)
    assert backfilled.identifier.encode() in ingest["body"]  # its key, unchanged
    assert len(orb_fake.calls("/v1/events/backfills/", method="POST")) == 1  # the close
    # Pending until Orb has reflected it, then counted: once.
    assert backfill["status"] == "pending"
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 1
    orb_fake.reflect_backfills()
    assert backfill["status"] == "reflected"
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 2
    assert orb_fake.count_key(backfilled.identifier) == 1

    again = usage_push()

    assert again.attempted == 0 and len(orb_fake.backfills) == 1
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 2


def test_usage_inside_a_longer_grace_period_at_orb_is_ingested_live_once(orb_fake, account, calls):
    """ORB_GRACE_PERIOD_HOURS shorter than the Orb account's own grace period: Orb refuses a
    backfill ending inside its grace period, so the usage goes live instead of waiting for
    ever."""
    orb_fake.grace_seconds = 3 * 86_400
    late = make_event(account, calls, Decimal(1), hours_ago(20))  # ours says 12 hours

    result = usage_push()

    entry = PushLedgerEntry.objects.get(event=late)
    assert entry.status == Status.ACKNOWLEDGED and result.acknowledged == 1
    assert not orb_fake.backfills
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 1
    assert orb_fake.count_key(entry.identifier) == 1


def test_a_reverted_backfill_no_longer_counts(orb_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(20))
    usage_push()
    orb_fake.reflect_backfills()
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 1
    (backfill,) = orb_fake.backfills.values()

    get_provider().client.events.backfills.revert(backfill["id"])

    assert backfill["status"] == "pending_revert"
    orb_fake.reflect_backfills()
    assert backfill["status"] == "reverted"
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 0


def test_usage_older_than_orbs_backfill_window_stays_too_old_and_is_never_sent(
    orb_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(32 * 24))  # backfills reach 31 days
    make_event(account, calls, Decimal(1), hours_ago(30 * 24))
    make_event(account, calls, Decimal(1), hours_ago(1))

    result = usage_push()

    statuses = sorted(PushLedgerEntry.objects.values_list("status", flat=True))
    assert statuses == [Status.ACKNOWLEDGED, Status.SENT, Status.TOO_OLD]
    assert result.too_old == 1
    too_old = PushLedgerEntry.objects.get(status=Status.TOO_OLD)
    assert too_old.error_code == "older_than_push_window" and too_old.attempts == 0
    assert too_old.identifier.encode() not in b"".join(
        c["body"] for c in orb_fake.calls("/v1/ingest")
    )
    rules = platform_rules("orb")
    assert rules.past_window == timedelta(hours=12)
    assert rules.backfill_window == rules.oldest_accepted == timedelta(days=31)


def test_a_backfill_overlapping_one_orb_still_reflects_waits_for_a_later_run(
    orb_fake, account, calls
):
    orb_fake.reflect_seconds = 3600
    at = hours_ago(20)
    make_event(account, calls, Decimal(1), at)
    usage_push()  # a closed backfill over [at, at + 1s), still pending at Orb
    make_event(account, calls, Decimal(1), at)

    result = usage_push()

    waiting = PushLedgerEntry.objects.get(status=Status.PENDING)
    assert waiting.error_code == "backfill_refused" and result.retry_later == 1
    assert "overlaps" in waiting.response["message"]
    orb_fake.reflect_backfills()

    usage_push()

    waiting.refresh_from_db()
    assert waiting.status == Status.SENT and len(orb_fake.backfills) == 2
    orb_fake.reflect_backfills()
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 2


def test_a_grace_period_longer_at_us_than_at_orb_sends_orbs_refusals_by_a_backfill(
    settings, orb_fake, account, calls
):
    settings.ORB_GRACE_PERIOD_HOURS = 48  # misconfigured: Orb's account keeps 12 hours
    old = make_event(account, calls, Decimal(1), hours_ago(20))
    make_event(account, calls, Decimal(1), hours_ago(1))
    make_event(account, calls, Decimal(1), hours_ago(2))

    result = usage_push()

    by_event = {e.event_id: e for e in PushLedgerEntry.objects.all()}
    refused = by_event.pop(old.pk)
    assert refused.status == Status.SENT and refused.response["backfill_id"]
    assert {e.status for e in by_event.values()} == {Status.ACKNOWLEDGED}
    # Orb ingested nothing of the refused request; the other two went in one more request,
    # the refused one by a backfill.
    assert [c["status"] for c in orb_fake.calls("/v1/ingest")] == [400, 200, 200]
    orb_fake.reflect_backfills()
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 3
    assert result.sent == 1 and result.acknowledged == 2


def test_rate_limited_requests_are_retried_honouring_retry_after(orb_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    orb_fake.retry_after = "0.01"
    orb_fake.fail_next(3)

    result = usage_push()

    assert result.acknowledged == 1
    assert [c["status"] for c in orb_fake.calls()][:3] == [429, 429, 429]
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 1


def test_a_retry_after_past_the_cap_halts_the_run_and_leaves_the_rest_pending(
    orb_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()  # customer and metric exist now
    make_event(account, calls, Decimal(1), hours_ago(2))
    orb_fake.retry_after = "120"
    orb_fake.fail_next(1)

    result = usage_push()

    assert "120s" in result.halted
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 1
    orb_fake.retry_after = "0"
    assert usage_push().acknowledged == 1
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 2


def test_many_events_go_in_requests_of_the_declared_batch_size(settings, orb_fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 100) for n in range(120)])
    adapter = get_provider(batch_size=50)

    result = usage_push(provider=adapter)

    assert result.acknowledged == 120
    assert len(orb_fake.calls("/v1/ingest")) == 3
    assert orb_fake.total(event_name="mo_calls", customer="orb-acme") == 120


# --- a push killed after Orb answered ------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django
    django.setup()
    from billing.services.push import send as push_send
    from billing.services.push import usage_push

    original = push_send._record_results

    def record_then_die(entries, results, now):
        original(entries, results, now)
        os._exit(17)  # Orb answered; the transaction recording the answers never commits

    if os.environ.get("KILL") == "1":
        push_send._record_results = record_then_die
    if os.environ.get("KILL") == "before_close":
        from billing.providers.orb import OrbProvider

        def die_before_close(self, backfill):
            os._exit(17)  # ingested into the backfill; neither closed nor recorded

        OrbProvider._close_backfill = die_before_close
    result = usage_push()
    print("acknowledged", result.acknowledged)
    """
)


def _child(fake: FakeOrb, *, kill: bool | str) -> subprocess.CompletedProcess:
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@"
        f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
        f"{settings_dict['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BILLING_PROVIDER": "orb",
        "ORB_API_KEY": fake.api_key,
        "ORB_API_BASE": fake.url,
        "KILL": kill if isinstance(kill, str) else ("1" if kill else "0"),
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.django_db(transaction=True)
def test_a_push_killed_after_orb_answered_is_counted_once_after_the_rerun(orb_fake):
    account = AccountFactory(external_id="orb-kill", name="Kill")
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    make_events(account, storage, Decimal("0.25"), [hours_ago(1 + n / 60) for n in range(30)])

    killed = _child(orb_fake, kill=True)

    assert killed.returncode == 17, killed.stderr
    pending = PushLedgerEntry.objects.filter(status=Status.PENDING)
    assert pending.count() == 30  # the answers were never recorded
    assert all(e.attempts == 1 and e.first_sent_at for e in pending)
    assert orb_fake.total(event_name="mo_storage", customer="orb-kill") == Decimal("7.5")

    rerun = _child(orb_fake, kill=False)

    assert rerun.returncode == 0, rerun.stderr
    assert "acknowledged 30" in rerun.stdout
    assert not PushLedgerEntry.objects.exclude(status=Status.ACKNOWLEDGED).exists()
    assert all(
        e.response["result"] == "duplicate" for e in PushLedgerEntry.objects.all()
    )  # Orb already had every key
    assert orb_fake.total(event_name="mo_storage", customer="orb-kill") == Decimal("7.5")
    assert all(orb_fake.count_key(e.identifier) == 1 for e in PushLedgerEntry.objects.all())
    ingests = orb_fake.calls("/v1/ingest")
    assert len(ingests) == 2 and ingests[0]["body"] == ingests[1]["body"]  # the very same request


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kill", ["before_close", "1"])
def test_a_backfill_push_killed_after_orb_answered_counts_each_event_once_after_the_rerun(
    orb_fake, kill
):
    """Killed after the events went into the backfill: before closing it (the rerun finds it
    open and uses it again) or after closing it (Orb refuses an overlapping backfill while it
    reflects; the run after sends them again)."""
    orb_fake.reflect_seconds = 3600  # longer than the child processes take
    account = AccountFactory(external_id="orb-late", name="Late")
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    make_events(account, storage, Decimal("0.5"), [hours_ago(14 + n / 60) for n in range(10)])

    killed = _child(orb_fake, kill=kill)

    assert killed.returncode == 17, killed.stderr
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 10
    (first,) = orb_fake.backfills.values()
    assert first["events_ingested"] == 10

    rerun = _child(orb_fake, kill=False)
    if kill == "1":
        assert rerun.returncode == 0, rerun.stderr
        assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 10
        orb_fake.reflect_backfills()  # Orb has reflected the closed one
        rerun = _child(orb_fake, kill=False)

    assert rerun.returncode == 0, rerun.stderr
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.SENT}
    # Orb had every key from the killed run: each answered a duplicate, none counted twice.
    assert set(PushLedgerEntry.objects.values_list("error_code", flat=True)) == {
        "duplicate_idempotency_key"
    }
    orb_fake.reflect_backfills()
    assert all(b["status"] == "reflected" for b in orb_fake.backfills.values())
    assert orb_fake.total(event_name="mo_storage", customer="orb-late") == Decimal("5")
    assert all(orb_fake.count_key(e.identifier) == 1 for e in PushLedgerEntry.objects.all())
    assert len(orb_fake.backfills) == (1 if kill == "before_close" else 2)


# --- reading back ----------------------------------------------------------------------------------


def _midnight(days_ago: int) -> datetime:
    today = datetime.now(UTC).date() - timedelta(days=days_ago)
    return datetime(today.year, today.month, today.day, tzinfo=UTC)


def test_the_pull_stores_orbs_usage_per_utc_day_and_its_invoices(
    settings, orb_fake, account, storage
):
    settings.ORB_GRACE_PERIOD_HOURS = 24 * 5
    orb_fake.grace_seconds = 5 * 86_400
    yesterday_noon = _midnight(1) + timedelta(hours=12)
    make_event(account, storage, Decimal("2.25"), yesterday_noon)
    make_event(account, storage, Decimal("0.5"), yesterday_noon + timedelta(hours=1))
    make_event(account, storage, Decimal("1"), _midnight(2) + timedelta(hours=3))
    usage_push()
    metric = orb_fake.metric_by_event("mo_storage")
    orb_fake.subscribe("orb-acme", unit_prices={metric["id"]: Decimal("0.1")})
    orb_fake.create_invoice(
        external_customer_id="orb-acme", lines=[(metric["id"], Decimal("3.75"), Decimal("0.38"))]
    )

    result = provider_pull()

    days = dict(ProviderUsageSummary.objects.filter(provider="orb").values_list("day", "value"))
    assert days == {
        _midnight(1).date(): Decimal("2.75"),
        _midnight(2).date(): Decimal("1"),
    }
    usage_calls = orb_fake.calls("/v1/subscriptions/")
    assert all(c["query"]["granularity"] == "day" for c in usage_calls)
    assert result.invoices == 1
    invoice = ProviderInvoice.objects.get(provider="orb")
    assert invoice.total_minor == 38 and invoice.account == account
    line = invoice.lines.get()
    assert line.meter == storage and line.quantity == Decimal("3.75") and line.amount_minor == 38


def test_exact_bounds_are_read_as_one_window(orb_fake, account, storage):
    make_event(account, storage, Decimal("4"), hours_ago(2))
    usage_push()
    orb_fake.subscribe("orb-acme")
    adapter = get_provider()
    metric = ProviderMeter.objects.get(provider="orb", meter=storage).provider_meter_id
    start = (datetime.now(UTC) - timedelta(hours=5)).replace(second=0, microsecond=0)

    summaries = list(
        adapter.list_meter_event_summaries(
            provider_meter_id=metric,
            customer_id="orb-acme",
            start=start,
            end=start + timedelta(hours=4),
        )
    )

    assert [(s.start, s.end, s.value) for s in summaries] == [
        (start, start + timedelta(hours=4), Decimal("4"))
    ]
    assert "granularity" not in orb_fake.calls("/v1/subscriptions/")[-1]["query"]


def test_upcoming_invoice_preview_and_a_credit(orb_fake, account, storage):
    make_event(account, storage, Decimal("10"), hours_ago(1))
    usage_push()
    metric = orb_fake.metric_by_event("mo_storage")
    orb_fake.subscribe("orb-acme", unit_prices={metric["id"]: Decimal("0.25")})
    adapter = get_provider()

    preview = adapter.upcoming_invoice(customer_id="orb-acme")
    request = CreditRequest(
        reference="adjustment-1",
        idempotency_key="mo-credit-1",
        customer_id="orb-acme",
        currency="USD",
        amount_minor=1234,
        reason_code="outage_sla",
        description="Outage credit",
    )
    credit = adapter.create_credit(request)
    again = adapter.create_credit(request)

    assert preview.total_minor == 250 and preview.status == "draft"
    assert [(li.meter_code, li.quantity) for li in preview.lines] == [("storage", Decimal("10"))]
    assert credit.credit_id == again.credit_id and credit.route == CreditRoute.BALANCE_INCREMENT
    assert len(orb_fake.balance_transactions) == 1  # the same key, once
    assert orb_fake.balance_transactions[0]["amount"] == "12.34"


def test_no_subscription_reads_no_usage_and_no_preview(orb_fake):
    adapter = get_provider()
    adapter.ensure_customer(external_id="lonely", name="Lonely")
    assert adapter.upcoming_invoice(customer_id="lonely") is None
    assert (
        list(
            adapter.list_meter_event_summaries(
                provider_meter_id="bm_x",
                customer_id="lonely",
                start=_midnight(2),
                end=_midnight(0),
            )
        )
        == []
    )


# --- the adapter alone -------------------------------------------------------------------------


def test_a_wrong_key_is_misconfiguration_not_a_retry(orb_fake):
    adapter = OrbProvider(api_key="orb_wrong", api_base=orb_fake.url, sleep=lambda s: None)
    with pytest.raises(ProviderMisconfigured):
        adapter.ensure_customer(external_id="x", name="X")
    assert len(orb_fake.requests) == 1


def test_a_matched_customer_and_metric_are_not_created_twice(orb_fake):
    first = OrbProvider(api_key=orb_fake.api_key, api_base=orb_fake.url)
    second = OrbProvider(api_key=orb_fake.api_key, api_base=orb_fake.url)
    spec = MeterSpec("calls", "Calls", "mo_calls", "sum")
    assert first.ensure_meter(spec=spec) == second.ensure_meter(spec=spec)
    first.ensure_customer(external_id="same", name="Same")
    second.ensure_customer(external_id="same", name="Same")
    assert len(orb_fake.customers) == 1 and len(orb_fake.metrics) == 1


def test_values_go_as_json_numbers_with_their_exact_digits(orb_fake):
    adapter = OrbProvider(api_key=orb_fake.api_key, api_base=orb_fake.url)
    at = hours_ago(1)
    values = [Decimal("0.1"), Decimal("123456789012.345"), Decimal("7"), Decimal("-2.5")]
    items = [
        UsageItem(f"v{n}", f"v{n}", "mo_calls", "exact", value, at)
        for n, value in enumerate(values)
    ]
    adapter.report_usage(items)
    assert b'"value":123456789012.345' in orb_fake.calls("/v1/ingest")[0]["body"]
    assert orb_fake.total(event_name="mo_calls", customer="exact") == sum(values)
    with pytest.raises(ValueError):
        json_number(Decimal("0.12345678901234567890"))


def test_a_falling_gauge_is_billed_at_its_last_value_not_its_highest(orb_fake, account):
    seats = MeterFactory(code="seats", aggregation=Meter.Aggregation.LATEST, value_property="n")
    make_event(account, seats, Decimal("10"), hours_ago(3))
    usage_push()
    make_event(account, seats, Decimal("4"), hours_ago(2))

    usage_push()

    metric = orb_fake.metric_by_event("mo_seats")
    assert metric["sql"] == (
        "SELECT LATEST_BY(value, timestamp) FROM events WHERE event_name = 'mo_seats'"
    )
    assert [e.value for e in orb_fake.counted(event_name="mo_seats")] == [10, 4]
    orb_fake.subscribe("orb-acme", unit_prices={metric["id"]: Decimal("1")})
    preview = get_provider().upcoming_invoice(customer_id="orb-acme")
    assert [li.quantity for li in preview.lines] == [Decimal("4")]  # MAX(value) would bill 10


# --- the mapping in the admin -------------------------------------------------------------------


def test_the_customer_and_meter_mapping_at_orb_shows_in_the_admin(
    orb_fake, admin_client, account, storage
):
    from billing.models import ProviderCustomer

    make_event(account, storage, Decimal(2), hours_ago(1))
    usage_push()
    usage_push()  # resolved again: no new mapping, no new history row

    mapping = ProviderCustomer.objects.get(provider="orb", account=account)
    assert (mapping.provider_customer_id, mapping.matched_by) == ("orb-acme", "external_id")
    assert mapping.history.count() == 1
    customers = admin_client.get("/admin/billing/providercustomer/?provider=orb")
    meters = admin_client.get("/admin/billing/providermeter/?provider=orb")
    assert customers.status_code == meters.status_code == 200
    assert "orb-acme" in customers.content.decode()
    assert orb_fake.metric_by_event("mo_storage")["id"] in meters.content.decode()
    detail = admin_client.get(f"/admin/billing/providercustomer/{mapping.pk}/change/")
    assert detail.status_code == 200


# --- Orb as the read-only secondary platform ----------------------------------------------------


def test_orb_as_the_secondary_platform_is_read_side_by_side_and_never_written(
    settings, orb_fake, account, storage
):
    from billing.providers import get_secondary_provider
    from billing.tasks import billing_provider_pull

    # The team still pushes to Orb itself during the migration (here: straight to the fake).
    writer = OrbProvider(api_key=orb_fake.api_key, api_base=orb_fake.url)
    metric = writer.ensure_meter(spec=MeterSpec("storage", "Storage", "mo_storage", "sum"))
    writer.ensure_customer(external_id="orb-acme", name="Acme")
    orb_fake.subscribe("orb-acme")
    at = hours_ago(1)
    writer.report_usage([UsageItem("team-1", "team-1", "mo_storage", "orb-acme", Decimal(5), at)])
    writes_before = len([r for r in orb_fake.requests if r["method"] != "GET"])
    # Meterops pushes to the simulated provider (primary) and reads Orb beside it.
    settings.BILLING_PROVIDER = "simulated"
    settings.BILLING_PROVIDER_SECONDARY = "orb"
    make_event(account, storage, Decimal(5), at)
    usage_push()

    result = billing_provider_pull.delay().get()

    day = at.date()
    stored = dict(
        ProviderUsageSummary.objects.filter(account=account, meter=storage, day=day).values_list(
            "provider", "value"
        )
    )
    assert stored == {"simulated": Decimal(5), "orb": Decimal(5)}
    assert result["secondary"]["provider"] == "orb" and result["secondary"]["pairs"] == 1
    mapping = ProviderMeter.objects.get(provider="orb", meter=storage)
    assert mapping.provider_meter_id == metric.provider_meter_id  # matched, not created
    assert len([r for r in orb_fake.requests if r["method"] != "GET"]) == writes_before
    secondary = get_secondary_provider()
    with pytest.raises(ProviderMisconfigured):
        secondary.report_usage(
            [UsageItem("x", "x", "mo_storage", "orb-acme", Decimal(1), hours_ago(1))]
        )
