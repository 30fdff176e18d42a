"""The Lago adapter (the official `lago-python-client` SDK) against the suite's fake Lago
server (tests/billing/fakes/lago.py): pushed exactly once through the ledger, across Lago's
422 `value_already_exist` for a repeated transaction_id, its all-or-nothing batches, rate
limits and a process killed after Lago answered; read back per billing period (Lago has no
per-day read); invoices and the current-usage preview."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from lago_python_client.models.wallet import Wallet

from billing.models import ProviderInvoice, ProviderMeter, PushLedgerEntry
from billing.providers import get_provider, platform_rules
from billing.providers.base import (
    CreditRequest,
    CreditRoute,
    ItemStatus,
    ProviderError,
    ProviderMisconfigured,
    ProviderUnavailable,
    UsageItem,
)
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.fakes.lago import FakeLago
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status
ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400


@pytest.fixture
def account():
    return AccountFactory(external_id="lago-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def batches(fake: FakeLago) -> list[dict]:
    return fake.calls("/api/v1/events/batch")


def item(n: int, *, customer: str = "lago-acme", value: str = "1") -> UsageItem:
    return UsageItem(
        identifier=f"id-{n}",
        idempotency_key=f"id-{n}",
        event_name="mo_calls",
        customer_id=customer,
        value=Decimal(value),
        timestamp=datetime.now(UTC) - timedelta(hours=1),
    )


# --- pushing -------------------------------------------------------------------------------------


def test_each_event_is_sent_once_with_its_transaction_id_and_acknowledged(
    lago_fake, account, storage
):
    for n in range(3):
        make_event(account, storage, Decimal("1.5") + n, hours_ago(n + 1))

    result = usage_push()

    assert result.provider == "lago" and result.acknowledged == 3 and not result.failed
    entries = list(PushLedgerEntry.objects.order_by("pk"))
    assert {e.status for e in entries} == {Status.ACKNOWLEDGED}
    assert sorted(t for _s, t in lago_fake.keys) == sorted(e.identifier for e in entries)
    assert {s for s, _t in lago_fake.keys} == {"lago-acme"}  # the subscription's external id
    assert lago_fake.customers["lago-acme"]["timezone"] == "UTC"
    assert lago_fake.total(code="mo_storage", subscription="lago-acme") == Decimal("7.5")
    # Values go as exact decimal strings.
    sent = json.loads(batches(lago_fake)[0]["body"])["events"]
    assert sorted(e["properties"]["value"] for e in sent) == ["1.5", "2.5", "3.5"]
    metric = lago_fake.metrics["mo_storage"]
    assert metric["aggregation_type"] == "sum_agg" and metric["field_name"] == "value"
    assert ProviderMeter.objects.get(provider="lago", meter=storage).provider_meter_id == (
        "mo_storage"
    )
    rules = platform_rules("lago")
    assert rules.key_field == "transaction_id" and rules.read_window == "period"

    again = usage_push()
    assert again.attempted == 0 and len(batches(lago_fake)) == 1


def test_a_resend_answered_422_value_already_exist_counts_as_duplicate_not_failure(
    lago_fake, account, calls
):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    entry = PushLedgerEntry.objects.get()
    # The answer was lost: pending again, first sent two days ago (Lago keeps the
    # transaction_id for good, so the ledger simply sends it again).
    PushLedgerEntry.objects.filter(pk=entry.pk).update(
        status=Status.PENDING, first_sent_at=datetime.now(UTC) - timedelta(days=2)
    )

    result = usage_push()

    entry.refresh_from_db()
    assert result.attempted == 1 and not result.failed
    assert [c["status"] for c in batches(lago_fake)] == [200, 422]
    assert entry.status == Status.ACKNOWLEDGED and entry.response["result"] == "duplicate"
    assert lago_fake.count_key(entry.identifier) == 1
    assert lago_fake.total(code="mo_calls", subscription="lago-acme") == 1


def test_a_refused_batch_saves_nothing_and_the_others_go_again_on_their_own(lago_fake):
    adapter = get_provider()
    adapter.report_usage([item(1)])
    # One repeat and one event Lago refuses for good in a batch of five.
    bad = UsageItem(
        identifier="id-bad",
        idempotency_key="id-bad",
        event_name="",
        customer_id="lago-acme",
        value=Decimal(1),
        timestamp=datetime.now(UTC),
    )
    items = [item(2), item(1), item(3), bad, item(4)]

    results = adapter.report_usage(items)

    assert [r.status for r in results] == [
        ItemStatus.RECORDED,
        ItemStatus.DUPLICATE,
        ItemStatus.RECORDED,
        ItemStatus.REJECTED,
        ItemStatus.RECORDED,
    ]
    assert results[1].code == "value_already_exist" and "code" in results[3].message
    statuses = [c["status"] for c in batches(lago_fake)]
    assert statuses == [200, 422, 200]
    # The refused batch saved nothing: each event is held once.
    assert [lago_fake.count_key(f"id-{n}") for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert lago_fake.count_key("id-bad") == 0
    assert len(json.loads(batches(lago_fake)[2]["body"])["events"]) == 3


def test_batches_hold_at_most_100_events(lago_fake, account, calls):
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 1000) for n in range(150)])

    result = usage_push()

    assert result.acknowledged == 150
    sizes = [len(json.loads(c["body"])["events"]) for c in batches(lago_fake)]
    assert sizes == [100, 50]
    assert lago_fake.total(code="mo_calls", subscription="lago-acme") == 150
    assert get_provider(batch_size=500).batch_size == 100


def test_rate_limited_requests_are_retried_after_the_reset(lago_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    lago_fake.rate_limit_reset = "0"
    lago_fake.fail_next(3)

    result = usage_push()

    assert result.acknowledged == 1
    assert [c["status"] for c in lago_fake.calls()][:3] == [429, 429, 429]
    assert lago_fake.total(code="mo_calls", subscription="lago-acme") == 1


def test_a_reset_past_the_cap_halts_the_run_and_leaves_the_rest_pending(lago_fake, account, calls):
    make_event(account, calls, Decimal(1), hours_ago(1))
    usage_push()
    make_event(account, calls, Decimal(1), hours_ago(2))
    lago_fake.rate_limit_reset = "120"
    lago_fake.fail_next(1)

    result = usage_push()

    assert "120s" in result.halted
    assert PushLedgerEntry.objects.filter(status=Status.PENDING).count() == 1
    lago_fake.rate_limit_reset = "0"
    assert usage_push().acknowledged == 1
    assert lago_fake.total(code="mo_calls", subscription="lago-acme") == 2


# --- a push killed after Lago answered -----------------------------------------------------------

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
        os._exit(17)  # Lago answered; the transaction recording the answers never commits

    if os.environ.get("KILL") == "1":
        push_send._record_results = record_then_die
    result = usage_push()
    print("acknowledged", result.acknowledged)
    """
)


def _child(fake: FakeLago, *, kill: bool) -> subprocess.CompletedProcess:
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@"
        f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
        f"{settings_dict['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "BILLING_PROVIDER": "lago",
        "LAGO_API_KEY": fake.api_key,
        "LAGO_API_URL": fake.url,
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
def test_a_push_killed_after_lago_answered_is_counted_once_after_the_rerun(lago_fake):
    account = AccountFactory(external_id="lago-kill", name="Kill")
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    make_events(account, storage, Decimal("0.25"), [hours_ago(1 + n / 60) for n in range(30)])

    killed = _child(lago_fake, kill=True)

    assert killed.returncode == 17, killed.stderr
    pending = PushLedgerEntry.objects.filter(status=Status.PENDING)
    assert pending.count() == 30  # the answers were never recorded
    assert lago_fake.total(code="mo_storage", subscription="lago-kill") == Decimal("7.5")

    rerun = _child(lago_fake, kill=False)

    assert rerun.returncode == 0, rerun.stderr
    assert "acknowledged 30" in rerun.stdout
    assert not PushLedgerEntry.objects.exclude(status=Status.ACKNOWLEDGED).exists()
    # Lago refused the whole resent batch with value_already_exist for every event.
    assert all(e.response["result"] == "duplicate" for e in PushLedgerEntry.objects.all())
    assert [c["status"] for c in batches(lago_fake)] == [200, 422]
    assert batches(lago_fake)[0]["body"] == batches(lago_fake)[1]["body"]
    assert lago_fake.total(code="mo_storage", subscription="lago-kill") == Decimal("7.5")
    assert all(lago_fake.count_key(e.identifier) == 1 for e in PushLedgerEntry.objects.all())


# --- reading back ----------------------------------------------------------------------------------


def test_usage_is_read_back_per_billing_period_only(lago_fake, account, storage):
    now = time.time()
    current_start = now - (now % DAY) - 3 * DAY
    past_start = current_start - 30 * DAY
    lago_fake.subscribe(
        "lago-acme",
        periods=[(past_start, current_start), (current_start, current_start + 30 * DAY)],
    )
    make_event(account, storage, Decimal("2.25"), hours_ago(1))
    make_event(account, storage, Decimal("0.5"), hours_ago(30))
    make_event(account, storage, Decimal("4"), datetime.fromtimestamp(past_start + DAY, UTC))
    usage_push()
    adapter = get_provider()

    summaries = list(
        adapter.list_meter_event_summaries(
            provider_meter_id="mo_storage",
            customer_id="lago-acme",
            start=datetime.fromtimestamp(past_start, UTC),
            end=datetime.now(UTC) + timedelta(days=1),
        )
    )

    as_tuples = sorted((s.start.timestamp(), s.end.timestamp(), s.value) for s in summaries)
    assert as_tuples == [
        (past_start, current_start, Decimal("4")),
        (current_start, current_start + 30 * DAY, Decimal("2.75")),
    ]
    assert lago_fake.calls("/api/v1/customers/lago-acme/past_usage")[0]["query"][
        "billable_metric_code"
    ] == ("mo_storage")
    # A window inside the current period still answers the whole period: no finer read.
    inside = list(
        adapter.list_meter_event_summaries(
            provider_meter_id="mo_storage",
            customer_id="lago-acme",
            start=datetime.fromtimestamp(current_start + DAY, UTC),
            end=datetime.fromtimestamp(current_start + 2 * DAY, UTC),
        )
    )
    assert [(s.start.timestamp(), s.value) for s in inside] == [(current_start, Decimal("2.75"))]


def test_the_pull_stores_lagos_invoices_with_their_fees(lago_fake, account, storage):
    make_event(account, storage, Decimal("3.75"), hours_ago(1))
    usage_push()
    lago_fake.subscribe("lago-acme", unit_prices={"mo_storage": Decimal("0.1")})
    lago_fake.create_invoice(
        external_customer_id="lago-acme", lines=[("mo_storage", Decimal("3.75"), 38)]
    )
    lago_fake.create_invoice(external_customer_id="someone-else", lines=[("mo_storage", 1, 5)])

    result = provider_pull()

    assert result.invoices == 1
    invoice = ProviderInvoice.objects.get(provider="lago")
    assert invoice.total_minor == 38 and invoice.account == account
    assert invoice.currency == "EUR" and invoice.number == "LAG-0001"
    line = invoice.lines.get()
    assert line.meter == storage and line.quantity == Decimal("3.75") and line.amount_minor == 38


def test_the_upcoming_invoice_is_lagos_current_usage(lago_fake, account, storage):
    make_event(account, storage, Decimal("10"), hours_ago(1))
    usage_push()
    lago_fake.subscribe("lago-acme", unit_prices={"mo_storage": Decimal("0.25")})

    preview = get_provider().upcoming_invoice(customer_id="lago-acme")

    assert preview is not None and preview.total_minor == 250 and preview.currency == "EUR"
    (line,) = preview.lines
    assert line.quantity == Decimal("10") and line.meter_code == "storage"
    assert get_provider().upcoming_invoice(customer_id="nobody") is None


def test_the_pull_keeps_a_period_on_its_first_day_wherever_the_pull_starts(
    lago_fake, account, storage
):
    from billing.models import ProviderUsageSummary
    from billing.services.pull import provider_summaries_pull

    now = time.time()
    start = now - (now % DAY) - 5 * DAY
    lago_fake.subscribe("lago-acme", periods=[(start, start + 30 * DAY)])
    make_event(account, storage, Decimal("1.25"), hours_ago(2))
    usage_push()
    adapter = get_provider()
    first = datetime.fromtimestamp(start, UTC).date()

    for since_days in (0, 3):  # a full pull, then (more usage) one starting inside the period
        if since_days:
            make_event(account, storage, Decimal("0.75"), hours_ago(1))
            usage_push()
        since = first + timedelta(days=since_days)
        provider_summaries_pull(
            provider=adapter,
            account=account,
            meter=storage,
            since=since,
            until=first + timedelta(days=7),
        )

    rows = list(ProviderUsageSummary.objects.filter(provider="lago").values_list("day", "value"))
    assert rows == [(first, Decimal("2.00"))]


def _credit(key: str = "mo-credit-1", amount_minor: int = 1234, **extra) -> CreditRequest:
    return CreditRequest(
        reference="adj-1",
        idempotency_key=key,
        customer_id="lago-acme",
        currency="USD",
        amount_minor=amount_minor,
        reason_code="outage_sla",
        description="Outage credit",
        **extra,
    )


def test_a_credit_is_granted_wallet_credits_once_per_key(lago_fake, account):
    adapter = get_provider(sleep=lambda s: None)
    adapter.ensure_customer(external_id="lago-acme", name="Acme")

    credit = adapter.create_credit(_credit())
    again = adapter.create_credit(_credit())
    other = adapter.create_credit(_credit("mo-credit-2", amount_minor=5))

    assert credit.route == CreditRoute.WALLET_GRANT and credit.credit_id == again.credit_id
    assert other.credit_id != credit.credit_id
    (wallet,) = lago_fake.wallets.values()
    assert (wallet["code"], wallet["rate_amount"], wallet["currency"]) == (
        "meterops_credits",
        "1",
        "USD",
    )
    grants = lago_fake.granted("lago-acme")
    assert [(g["credit_amount"], g["transaction_status"]) for g in grants] == [
        ("12.34", "granted"),
        ("0.05", "granted"),
    ]
    assert wallet["credits_balance"] == "12.39" and wallet["balance_cents"] == 1239
    pairs = {m["key"]: m["value"] for m in grants[0]["metadata"]}
    assert pairs["meterops_credit"] == "mo-credit-1" and pairs["meterops_adjustment"] == "adj-1"
    assert len(lago_fake.calls("/api/v1/wallets", method="POST")) == 1
    assert len(lago_fake.calls("/api/v1/wallet_transactions", method="POST")) == 2


def test_a_lost_grant_answer_is_looked_up_not_granted_again(lago_fake, account):
    slept: list[float] = []
    adapter = get_provider(sleep=slept.append)
    adapter.ensure_customer(external_id="lago-acme", name="Acme")
    lago_fake.lose_next("/api/v1/wallets")  # the wallet is made, its answer lost
    lago_fake.lose_next("/api/v1/wallet_transactions")  # the grant is made, its answer lost

    credit = adapter.create_credit(_credit())

    (grant,) = lago_fake.granted("lago-acme")
    assert credit.credit_id == grant["lago_id"] and grant["credit_amount"] == "12.34"
    assert len(lago_fake.wallets) == 1
    posts = lago_fake.calls("/api/v1/wallet_transactions", method="POST")
    assert [p["status"] for p in posts] == [502]  # looked up after the loss, not sent again
    assert len(slept) == 2  # one wait after each lost answer


def test_lago_down_is_unavailable_and_a_later_retry_grants_once(lago_fake, account):
    adapter = get_provider(sleep=lambda s: None, max_retries=2)
    adapter.ensure_customer(external_id="lago-acme", name="Acme")
    adapter.create_credit(_credit("mo-credit-0", amount_minor=1))
    (wallet_id,) = lago_fake.wallets
    # The lookup before the grant fails every attempt: nothing is granted blindly.
    lago_fake.lose_next(f"/api/v1/wallets/{wallet_id}/wallet_transactions", 3)

    with pytest.raises(ProviderUnavailable):
        adapter.create_credit(_credit())
    assert len(lago_fake.granted("lago-acme")) == 1
    assert len(lago_fake.calls("/api/v1/wallet_transactions", method="POST")) == 1
    retried = get_provider(sleep=lambda s: None).create_credit(_credit())

    _first, grant = lago_fake.granted("lago-acme")
    assert retried.credit_id == grant["lago_id"] and grant["credit_amount"] == "12.34"


def test_a_credit_lowers_lagos_next_invoice_by_exactly_its_amount(lago_fake, account, storage):
    adapter = get_provider()
    adapter.ensure_customer(external_id="lago-acme", name="Acme")
    adapter.create_credit(_credit(amount_minor=1000))

    first = lago_fake.create_invoice(
        external_customer_id="lago-acme", lines=[("mo_storage", 3, 700)], currency="USD"
    )
    second = lago_fake.create_invoice(
        external_customer_id="lago-acme", lines=[("mo_storage", 3, 700)], currency="USD"
    )

    assert (first["prepaid_credit_amount_cents"], first["total_amount_cents"]) == (700, 0)
    assert (second["prepaid_credit_amount_cents"], second["total_amount_cents"]) == (300, 400)


def test_a_wallet_not_worth_one_unit_a_credit_or_a_read_only_lago_refuses(lago_fake, account):
    adapter = get_provider()
    adapter.ensure_customer(external_id="lago-acme", name="Acme")
    adapter.client.wallets.create(
        Wallet(
            external_customer_id="lago-acme",
            code="meterops_credits",
            rate_amount="0.5",
            currency="USD",
        )
    )

    with pytest.raises(ProviderError, match=r"values a credit at 0\.5"):
        adapter.create_credit(_credit())
    adapter.read_only = True
    with pytest.raises(ProviderMisconfigured):
        adapter.create_credit(_credit())
    assert not lago_fake.calls("/api/v1/wallet_transactions", method="POST")


def test_lago_takes_usage_of_any_age_so_nothing_is_too_old(lago_fake, account, calls):
    """Lago documents no limit on an event's timestamp: a year-old entry is sent, not
    recorded too_old (whether a finalized invoice bills it is Lago's to say)."""
    old = make_event(account, calls, Decimal(1), hours_ago(400 * 24))
    recent = make_event(account, calls, Decimal(1), hours_ago(1))

    result = usage_push()

    entries = {e.event_id: e for e in PushLedgerEntry.objects.all()}
    assert entries[old.pk].status == entries[recent.pk].status == Status.ACKNOWLEDGED
    assert result.too_old == 0
    sent = [
        e["transaction_id"] for b in batches(lago_fake) for e in json.loads(b["body"])["events"]
    ]
    assert entries[old.pk].identifier in sent
    assert platform_rules("lago").past_window is None
