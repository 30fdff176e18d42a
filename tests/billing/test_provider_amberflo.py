"""The Amberflo adapter (Amberflo's REST API with httpx) against the suite's fake Amberflo
server (tests/billing/fakes/amberflo.py): pushed exactly once through the ledger (Amberflo
drops a repeated record silently; past 24 hours the read-back decides), in requests of at most
100 records, across rate limits and a process killed after Amberflo answered; old usage sent
(Amberflo takes backfills); read back per UTC day; invoices and the running invoice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import ProviderInvoice, ProviderMeter, ProviderUsageSummary, PushLedgerEntry
from billing.providers import get_provider, platform_rules
from billing.providers.base import ProviderMisconfigured
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.fakes.amberflo import FakeAmberflo
from tests.billing.push_child import KILLED_EXIT, run_push_child
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status


@pytest.fixture
def account():
    return AccountFactory(external_id="af-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def ingests(fake: FakeAmberflo) -> list[dict]:
    return fake.calls("/ingest")


def _midnight(days_ago: int) -> datetime:
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_each_event_is_ingested_once_as_a_meter_record_of_our_customer(
    amberflo_fake, account, storage
):
    for n in range(3):
        make_event(account, storage, Decimal("1.5") + n, hours_ago(n + 1))

    result = usage_push()

    assert result.provider == "amberflo" and result.acknowledged == 3 and not result.failed
    entries = list(PushLedgerEntry.objects.order_by("pk"))
    assert {e.status for e in entries} == {Status.ACKNOWLEDGED}
    assert amberflo_fake.customers["af-acme"]["customerName"] == "Acme"
    assert len(amberflo_fake.customers) == 1
    assert amberflo_fake.total(meter="mo_storage", customer="af-acme") == Decimal("7.5")
    sent = json.loads(ingests(amberflo_fake)[0]["body"])
    assert sorted(r["uniqueId"] for r in sent) == sorted(e.identifier for e in entries)
    assert {r["customerId"] for r in sent} == {"af-acme"}
    by_key = {e.identifier: e for e in entries}
    assert all(
        r["meterTimeInMillis"] == int(by_key[r["uniqueId"]].timestamp.timestamp()) * 1000
        for r in sent
    )
    meter = amberflo_fake.meters["mo_storage"]
    assert meter["meterType"] == "sum_of_all_usage"
    mapping = ProviderMeter.objects.get(provider="amberflo", meter=storage)
    assert mapping.provider_meter_id == "mo_storage"
    assert platform_rules("amberflo").key_retention == timedelta(hours=24)
    assert platform_rules("amberflo").past_window is None

    again = usage_push()
    assert again.attempted == 0 and len(ingests(amberflo_fake)) == 1


def test_a_resend_inside_24_hours_is_dropped_by_amberflo_and_counted_once(
    amberflo_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    entry = PushLedgerEntry.objects.get()
    PushLedgerEntry.objects.filter(pk=entry.pk).update(
        status=Status.PENDING, first_sent_at=datetime.now(UTC) - timedelta(hours=2)
    )

    result = usage_push()

    entry.refresh_from_db()
    assert result.attempted == 1 and not result.failed
    assert entry.status == Status.ACKNOWLEDGED
    assert len(ingests(amberflo_fake)) == 2
    assert ingests(amberflo_fake)[0]["body"] == ingests(amberflo_fake)[1]["body"]
    assert amberflo_fake.count_key(entry.identifier) == 1
    assert amberflo_fake.total(meter="mo_calls", customer="af-acme") == 1


def test_past_24_hours_amberflos_read_back_decides_and_nothing_is_sent_again(
    amberflo_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    entry = PushLedgerEntry.objects.get()
    PushLedgerEntry.objects.filter(pk=entry.pk).update(
        status=Status.PENDING, first_sent_at=datetime.now(UTC) - timedelta(hours=25)
    )

    result = usage_push()

    entry.refresh_from_db()
    assert result.stale_acknowledged == 1 and result.attempted == 0
    assert entry.status == Status.ACKNOWLEDGED
    assert entry.response["resolved_by"] == "provider_summary"
    assert len(ingests(amberflo_fake)) == 1
    usage = json.loads(amberflo_fake.calls("/usage")[-1]["body"])
    assert usage["timeGroupingInterval"] == "DAY" and usage["aggregation"] == "SUM"
    assert amberflo_fake.count_key(entry.identifier) == 1


def test_requests_hold_at_most_100_records(amberflo_fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 1000) for n in range(150)])

    result = usage_push()

    assert result.acknowledged == 150
    assert [len(json.loads(c["body"])) for c in ingests(amberflo_fake)] == [100, 50]
    assert amberflo_fake.total(meter="mo_calls", customer="af-acme") == 150


def test_rate_limited_requests_are_retried_honouring_retry_after(amberflo_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    amberflo_fake.fail_next(3)

    result = usage_push()

    assert result.acknowledged == 1
    assert [c["status"] for c in amberflo_fake.calls()][:3] == [429, 429, 429]
    assert amberflo_fake.total(meter="mo_calls", customer="af-acme") == 1


def test_a_retry_after_past_the_cap_halts_the_run(amberflo_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    make_event(account, calls, Decimal(1), hours_ago(2))
    amberflo_fake.retry_after = "120"
    amberflo_fake.fail_next(1)

    result = usage_push()

    assert "120s" in result.halted
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 1
    amberflo_fake.retry_after = "0"
    assert usage_push().acknowledged == 1
    assert amberflo_fake.total(meter="mo_calls", customer="af-acme") == 2


def test_usage_older_than_stripes_window_is_sent_because_amberflo_takes_backfills(
    amberflo_fake, account, storage
):
    old = hours_ago(24 * 60)
    make_event(account, storage, Decimal("4"), old)

    result = usage_push()

    assert platform_rules("stripe").past_window < timedelta(days=60)
    assert result.too_old == 0 and result.acknowledged == 1
    (record,) = amberflo_fake.events
    assert record.timestamp == old.timestamp() and record.value == 4


def test_a_request_amberflo_refuses_is_rejected_for_good_not_retried(amberflo_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()  # customer and meter made
    make_event(account, calls, Decimal(1), hours_ago(2))
    amberflo_fake.fail_next(1, status=400, path="/ingest")

    result = usage_push()

    assert result.attempted == 1 and result.acknowledged == 0
    entry = PushLedgerEntry.objects.order_by("-pk").first()
    assert entry.status != Status.PENDING and entry.status != Status.ACKNOWLEDGED
    assert len([c for c in ingests(amberflo_fake) if c["status"] == 400]) == 1
    assert amberflo_fake.total(meter="mo_calls", customer="af-acme") == 1


def test_a_key_amberflo_refuses_is_a_configuration_error(amberflo_fake, settings):
    settings.AMBERFLO_API_KEY = "wrong"
    adapter = get_provider()

    with pytest.raises(ProviderMisconfigured):
        adapter.ensure_customer(external_id="af-acme", name="Acme")
    assert [c["status"] for c in amberflo_fake.calls()] == [401]


@pytest.mark.django_db(transaction=True)
def test_a_push_killed_after_amberflo_answered_is_counted_once_after_the_rerun(amberflo_fake):
    account = AccountFactory(external_id="af-kill", name="Kill")
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    make_events(account, storage, Decimal("0.25"), [hours_ago(1 + n / 60) for n in range(30)])
    env = {
        "BILLING_PROVIDER": "amberflo",
        "AMBERFLO_API_KEY": amberflo_fake.api_key,
        "AMBERFLO_BASE_URL": amberflo_fake.url,
    }

    killed = run_push_child(env=env, kill=True)

    assert killed.returncode == KILLED_EXIT, killed.stderr
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 30
    assert amberflo_fake.total(meter="mo_storage", customer="af-kill") == Decimal("7.5")

    rerun = run_push_child(env=env, kill=False)

    assert rerun.returncode == 0, rerun.stderr
    assert "acknowledged 30" in rerun.stdout
    assert not PushLedgerEntry.objects.exclude(status=Status.ACKNOWLEDGED).exists()
    assert len(ingests(amberflo_fake)) == 2
    assert ingests(amberflo_fake)[0]["body"] == ingests(amberflo_fake)[1]["body"]
    assert amberflo_fake.total(meter="mo_storage", customer="af-kill") == Decimal("7.5")
    assert all(amberflo_fake.count_key(e.identifier) == 1 for e in PushLedgerEntry.objects.all())


def test_the_pull_stores_amberflos_usage_per_utc_day_and_its_invoices(
    amberflo_fake, account, storage
):
    noon = _midnight(1) + timedelta(hours=12)
    make_event(account, storage, Decimal("2.25"), noon)
    make_event(account, storage, Decimal("0.5"), noon + timedelta(hours=1))
    make_event(account, storage, Decimal("1"), _midnight(2) + timedelta(hours=3))
    usage_push()
    amberflo_fake.create_invoice(
        customer="af-acme", lines=[("mo_storage", Decimal("3.75"), Decimal("0.375"))]
    )

    result = provider_pull()

    days = dict(
        ProviderUsageSummary.objects.filter(provider="amberflo").values_list("day", "value")
    )
    assert days == {_midnight(1).date(): Decimal("2.75"), _midnight(2).date(): Decimal("1")}
    queries = [json.loads(c["body"]) for c in amberflo_fake.calls("/usage")]
    assert queries and all(q["timeGroupingInterval"] == "DAY" for q in queries)
    assert all(q["filter"] == {"customerId": ["af-acme"]} for q in queries)
    assert all(q["timeRange"]["startTimeInSeconds"] % 86_400 == 0 for q in queries)
    assert result.invoices == 1
    invoice = ProviderInvoice.objects.get(provider="amberflo")
    assert invoice.total_minor == 38 and invoice.account == account and invoice.currency == "USD"
    line = invoice.lines.get()
    assert line.quantity == Decimal("3.75") and line.amount_minor == 38
    assert line.meter == storage


def test_amberflos_running_invoice_is_the_upcoming_preview_and_not_listed(
    amberflo_fake, account, storage
):
    make_event(account, storage, Decimal("2"), hours_ago(1))
    usage_push()
    now = datetime.now(UTC).timestamp()
    amberflo_fake.create_invoice(
        customer="af-acme",
        lines=[("mo_storage", Decimal("2"), Decimal("1.205"))],
        start=now - 86_400,
        end=now + 29 * 86_400,
    )
    adapter = get_provider()

    upcoming = adapter.upcoming_invoice(customer_id="af-acme")

    assert upcoming is not None and upcoming.total_minor == 121
    assert upcoming.lines[0].meter_code == "storage"
    assert upcoming.period_end > datetime.now(UTC)
    assert list(adapter.list_invoices(customer_id="af-acme")) == []
    assert adapter.upcoming_invoice(customer_id="nobody") is None


def test_a_period_to_date_meter_is_a_max_usage_meter_read_back_by_max(amberflo_fake, account):
    seats = MeterFactory(code="seats", aggregation=Meter.Aggregation.MAX, value_property="n")
    make_event(account, seats, Decimal("3"), _midnight(1) + timedelta(hours=2))
    make_event(account, seats, Decimal("5"), _midnight(1) + timedelta(hours=4))
    usage_push()

    provider_pull()

    assert amberflo_fake.meters["mo_seats"]["meterType"] == "max_usage"
    assert {json.loads(c["body"])["aggregation"] for c in amberflo_fake.calls("/usage")} == {"MAX"}
    # A period-to-date value (the period's max so far) is pushed at the push's time.
    (record,) = amberflo_fake.events
    summary = ProviderUsageSummary.objects.get(provider="amberflo")
    assert record.value == summary.value == 5
    assert summary.day == datetime.fromtimestamp(record.timestamp, UTC).date()


def test_a_customer_unknown_to_amberflo_reads_nothing_and_creates_nothing(amberflo_fake):
    adapter = get_provider()
    assert adapter.lookup_customer(external_id="nobody") == ""
    assert list(adapter.list_invoices(customer_id="nobody")) == []
    assert amberflo_fake.customers == {}
