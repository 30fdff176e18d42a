"""The Metronome adapter (the official `metronome-sdk`) against the suite's fake Metronome
server (tests/billing/fakes/metronome.py): pushed exactly once through the ledger (Metronome
drops a repeated transaction_id silently for 34 days), in requests of at most 100 events,
across rate limits and a process killed after Metronome answered; read back per UTC day;
invoices."""

from __future__ import annotations

import json
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
from billing.providers.answers import parse_time
from billing.providers.base import CreditRequest, CreditRoute, ProviderError
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.fakes.metronome import USD_CENTS, FakeMetronome
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def account():
    return AccountFactory(external_id="met-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def ingests(fake: FakeMetronome) -> list[dict]:
    return fake.calls("/v1/ingest")


def _midnight(days_ago: int) -> datetime:
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def test_each_event_is_ingested_once_under_the_ingest_alias(metronome_fake, account, storage):
    for n in range(3):
        make_event(account, storage, Decimal("1.5") + n, hours_ago(n + 1))

    result = usage_push()

    assert result.provider == "metronome" and result.acknowledged == 3 and not result.failed
    entries = list(PushLedgerEntry.objects.order_by("pk"))
    assert {e.status for e in entries} == {Status.ACKNOWLEDGED}
    assert sorted(metronome_fake.seen) == sorted(e.identifier for e in entries)
    customer = metronome_fake.customer_by_alias("met-acme")
    assert customer["external_id"] == "met-acme" and len(metronome_fake.customers) == 1
    assert metronome_fake.total(event_type="mo_storage", alias="met-acme") == Decimal("7.5")
    sent = json.loads(ingests(metronome_fake)[0]["body"])
    assert {e["customer_id"] for e in sent} == {"met-acme"}
    metric = next(iter(metronome_fake.metrics.values()))
    assert metric["aggregation_type"] == "SUM" and metric["aggregation_key"] == "value"
    assert metric["event_type_filter"] == {"in_values": ["mo_storage"]}
    assert (
        ProviderMeter.objects.get(provider="metronome", meter=storage).provider_meter_id
        == (metric["id"])
    )
    assert platform_rules("metronome").key_retention == timedelta(days=34)

    again = usage_push()
    assert again.attempted == 0 and len(ingests(metronome_fake)) == 1


def test_a_resend_inside_the_34_days_is_dropped_by_metronome_and_counted_once(
    metronome_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    entry = PushLedgerEntry.objects.get()
    PushLedgerEntry.objects.filter(pk=entry.pk).update(
        status=Status.PENDING, first_sent_at=datetime.now(UTC) - timedelta(days=2)
    )

    result = usage_push()

    entry.refresh_from_db()
    assert result.attempted == 1 and not result.failed
    assert entry.status == Status.ACKNOWLEDGED
    assert len(ingests(metronome_fake)) == 2
    assert metronome_fake.count_key(entry.identifier) == 1
    assert metronome_fake.total(event_type="mo_calls", alias="met-acme") == 1


def test_requests_hold_at_most_100_events(metronome_fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 1000) for n in range(150)])

    result = usage_push()

    assert result.acknowledged == 150
    assert [len(json.loads(c["body"])) for c in ingests(metronome_fake)] == [100, 50]
    assert metronome_fake.total(event_type="mo_calls", alias="met-acme") == 150


def test_rate_limited_requests_are_retried_honouring_retry_after(metronome_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    metronome_fake.fail_next(3)

    result = usage_push()

    assert result.acknowledged == 1
    assert [c["status"] for c in metronome_fake.calls()][:3] == [429, 429, 429]
    assert metronome_fake.total(event_type="mo_calls", alias="met-acme") == 1


def test_a_retry_after_past_the_cap_halts_the_run(metronome_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    make_event(account, calls, Decimal(1), hours_ago(2))
    metronome_fake.retry_after = "120"
    metronome_fake.fail_next(1)

    result = usage_push()

    assert "120s" in result.halted
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 1
    metronome_fake.retry_after = "0"
    assert usage_push().acknowledged == 1
    assert metronome_fake.total(event_type="mo_calls", alias="met-acme") == 2


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
        os._exit(17)  # Metronome answered; the transaction recording the answers never commits

    if os.environ.get("KILL") == "1":
        push_send._record_results = record_then_die
    result = usage_push()
    print("acknowledged", result.acknowledged)
    """
)


def _child(fake: FakeMetronome, *, kill: bool) -> subprocess.CompletedProcess:
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@"
        f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
        f"{settings_dict['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BILLING_PROVIDER": "metronome",
        "METRONOME_API_KEY": fake.api_key,
        "METRONOME_API_BASE": fake.url,
        "KILL": "1" if kill else "0",
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
def test_a_push_killed_after_metronome_answered_is_counted_once_after_the_rerun(
    metronome_fake,
):
    account = AccountFactory(external_id="met-kill", name="Kill")
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    make_events(account, storage, Decimal("0.25"), [hours_ago(1 + n / 60) for n in range(30)])

    killed = _child(metronome_fake, kill=True)

    assert killed.returncode == 17, killed.stderr
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 30
    assert metronome_fake.total(event_type="mo_storage", alias="met-kill") == Decimal("7.5")

    rerun = _child(metronome_fake, kill=False)

    assert rerun.returncode == 0, rerun.stderr
    assert "acknowledged 30" in rerun.stdout
    assert not PushLedgerEntry.objects.exclude(status=Status.ACKNOWLEDGED).exists()
    assert len(ingests(metronome_fake)) == 2
    assert ingests(metronome_fake)[0]["body"] == ingests(metronome_fake)[1]["body"]
    assert metronome_fake.total(event_type="mo_storage", alias="met-kill") == Decimal("7.5")
    assert all(metronome_fake.count_key(e.identifier) == 1 for e in PushLedgerEntry.objects.all())


def test_the_pull_stores_metronomes_usage_per_utc_day_and_its_invoices(
    metronome_fake, account, storage
):
    noon = _midnight(1) + timedelta(hours=12)
    make_event(account, storage, Decimal("2.25"), noon)
    make_event(account, storage, Decimal("0.5"), noon + timedelta(hours=1))
    make_event(account, storage, Decimal("1"), _midnight(2) + timedelta(hours=3))
    usage_push()
    metronome_fake.create_invoice(alias="met-acme", lines=[("Storage", Decimal("3.75"), 38)])

    result = provider_pull()

    days = dict(
        ProviderUsageSummary.objects.filter(provider="metronome").values_list("day", "value")
    )
    assert days == {_midnight(1).date(): Decimal("2.75"), _midnight(2).date(): Decimal("1")}
    assert all(
        json.loads(c["body"])["window_size"] == "DAY" for c in metronome_fake.calls("/v1/usage")
    )
    assert result.invoices == 1
    invoice = ProviderInvoice.objects.get(provider="metronome")
    assert invoice.total_minor == 38 and invoice.account == account and invoice.currency == "USD"
    line = invoice.lines.get()
    assert line.quantity == Decimal("3.75") and line.amount_minor == 38


def test_a_customer_unknown_to_metronome_reads_nothing_and_creates_nothing(metronome_fake):
    adapter = get_provider()
    assert adapter.lookup_customer(external_id="nobody") == ""
    assert list(adapter.list_invoices(customer_id="nobody")) == []
    assert metronome_fake.customers == {}


# --- the upcoming invoice and credits --------------------------------------------------------------


def _credit(key: str = "mo-credit-1", amount_minor: int = 1234, currency: str = "USD"):
    return CreditRequest(
        reference="adj-1",
        idempotency_key=key,
        customer_id="met-acme",
        currency=currency,
        amount_minor=amount_minor,
        reason_code="outage_sla",
        description="Outage credit",
    )


def test_the_upcoming_invoice_is_the_draft_of_the_current_period(metronome_fake, account):
    adapter = get_provider()
    assert adapter.upcoming_invoice(customer_id="met-acme") is None  # no customer yet
    adapter.ensure_customer(external_id="met-acme", name="Acme")
    assert adapter.upcoming_invoice(customer_id="met-acme") is None  # no draft
    metronome_fake.create_invoice(alias="met-acme", lines=[("Storage", Decimal(1), 999)])
    now = datetime.now(UTC).timestamp()
    metronome_fake.create_invoice(  # last period's draft, not yet finalized
        alias="met-acme",
        lines=[("Storage", 1, 5)],
        status="DRAFT",
        start=now - 40 * 86_400,
        end=now - 10 * 86_400,
    )
    draft = metronome_fake.create_invoice(
        alias="met-acme",
        lines=[("Storage", Decimal("10.5"), 1050), ("Calls", Decimal(3), 7)],
        status="DRAFT",
    )

    preview = adapter.upcoming_invoice(customer_id="met-acme")

    assert preview.invoice_id == draft["id"] and preview.status == "DRAFT"
    assert (preview.total_minor, preview.currency) == (1057, "USD")
    assert [(li.description, li.quantity, li.amount_minor) for li in preview.lines] == [
        ("Storage", Decimal("10.5"), 1050),
        ("Calls", Decimal(3), 7),
    ]
    assert preview.period_start.timestamp() == parse_time(draft["start_timestamp"]).timestamp()
    assert metronome_fake.calls("/v1/customers/")[-1]["query"]["status"] == "DRAFT"


def test_a_credit_is_one_credit_grant_per_key_drawn_down_by_the_draft(metronome_fake, account):
    adapter = get_provider()
    adapter.ensure_customer(external_id="met-acme", name="Acme")
    draft = metronome_fake.create_invoice(
        alias="met-acme", lines=[("Storage", Decimal(20), 2000)], status="DRAFT"
    )

    credit = adapter.create_credit(_credit())
    again = adapter.create_credit(_credit())

    assert credit.route == CreditRoute.CREDIT_GRANT and credit.credit_id == again.credit_id
    (grant,) = metronome_fake.grants_of("met-acme")
    assert grant["id"] == credit.credit_id and grant["uniqueness_key"] == "mo-credit-1"
    assert grant["grant_amount"] == {
        "amount": 1234,
        "credit_type": {"id": USD_CENTS, "name": "USD (cents)"},
    }
    assert grant["paid_amount"]["amount"] == 0
    assert grant["effective_at"] == draft["start_timestamp"]  # the current period's start
    assert [c["status"] for c in metronome_fake.calls("/v1/credits/createGrant")] == [200, 409]
    preview = adapter.upcoming_invoice(customer_id="met-acme")
    assert preview.total_minor == 2000 - 1234
    assert preview.raw["invoice_adjustments"][0]["credit_grant_id"] == credit.credit_id


def test_a_lost_grant_answer_is_retried_under_the_uniqueness_key_and_granted_once(
    metronome_fake, account
):
    slept: list[float] = []
    adapter = get_provider(sleep=slept.append)
    adapter.ensure_customer(external_id="met-acme", name="Acme")
    metronome_fake.lose_next("/v1/credits/createGrant")

    credit = adapter.create_credit(_credit())

    (grant,) = metronome_fake.grants_of("met-acme")
    assert credit.credit_id == grant["id"] and len(slept) == 1
    assert [c["status"] for c in metronome_fake.calls("/v1/credits/createGrant")] == [502, 409]


def test_a_credit_metronome_cannot_hold_exactly_is_refused(metronome_fake, account):
    adapter = get_provider()
    adapter.ensure_customer(external_id="met-acme", name="Acme")

    with pytest.raises(ProviderError, match="no GBP pricing unit"):
        adapter.create_credit(_credit(currency="GBP"))
    yen = adapter.create_credit(_credit("k-jpy", amount_minor=500, currency="JPY"))
    (grant,) = metronome_fake.grants
    assert grant["id"] == yen.credit_id and grant["grant_amount"]["amount"] == 500
    assert grant["grant_amount"]["credit_type"]["name"] == "JPY"  # whole yen, no cents
    with pytest.raises(ProviderError, match="no customer"):
        adapter.create_credit(
            CreditRequest(
                reference="adj-2",
                idempotency_key="k",
                customer_id="nobody",
                currency="USD",
                amount_minor=1,
                reason_code="goodwill",
                description="",
            )
        )
    assert len(metronome_fake.grants) == 1


def test_usage_backdated_past_metronomes_34_days_is_too_old_and_never_sent(
    metronome_fake, account, calls
):
    inside = make_event(account, calls, Decimal(1), hours_ago(33 * 24))
    outside = make_event(account, calls, Decimal(1), hours_ago(34 * 24 + 1))

    result = usage_push()

    entries = {e.event_id: e for e in PushLedgerEntry.objects.all()}
    assert entries[inside.pk].status == Status.ACKNOWLEDGED
    assert entries[outside.pk].status == Status.TOO_OLD and entries[outside.pk].attempts == 0
    assert result.too_old == 1
    sent = b"".join(c["body"] for c in ingests(metronome_fake))
    assert entries[inside.pk].identifier.encode() in sent
    assert entries[outside.pk].identifier.encode() not in sent
    assert platform_rules("metronome").past_window == timedelta(days=34)
