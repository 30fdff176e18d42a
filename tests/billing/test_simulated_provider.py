"""The simulated provider: Stripe's rules, kept in the database, with seeded faults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.models import (
    BillingPeriod,
    ProviderInvoice,
    ProviderMeter,
    ProviderUsageSummary,
    SimulatedFaultConfig,
    SimulatedUsageRecord,
)
from billing.providers import get_provider
from billing.providers.base import ItemStatus, UsageItem
from billing.providers.simulated import (
    FaultSettings,
    SimulatedProvider,
    fault_fraction,
    simulated_faults_configure,
)
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.factories import PlanFactory, PriceFactory, SubscriptionFactory
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def meter():
    meter = MeterFactory(code="sim_calls", aggregation=Meter.Aggregation.COUNT)
    ProviderMeter.objects.create(
        provider="simulated",
        meter=meter,
        provider_meter_id="sim_mtr_sim_calls",
        event_name="mo_sim_calls",
        aggregation="sum",
    )
    return meter


def items(count: int, *, start: int = 0, at: datetime = NOW - timedelta(hours=1)):
    return [
        UsageItem(f"id-{n}", f"id-{n}", "mo_sim_calls", "sim_acme", Decimal(1), at)
        for n in range(start, start + count)
    ]


def faulted(records) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for record in records:
        for fault in record.faults:
            found.setdefault(fault, set()).add(record.identifier)
    return found


def run(seed: int, batches: list[list[UsageItem]]) -> dict[str, set[str]]:
    SimulatedUsageRecord.objects.all().delete()
    faults = FaultSettings(
        seed=seed,
        drop_rate=Decimal("0.1"),
        duplicate_rate=Decimal("0.1"),
        delay_rate=Decimal("0.1"),
        delay_seconds=600,
        skew_rate=Decimal("0.1"),
        skew_seconds=-7200,
    )
    provider = SimulatedProvider(faults=faults)
    for batch in batches:
        provider.report_usage(batch)
    return faulted(SimulatedUsageRecord.objects.all())


def test_faults_are_the_same_for_the_same_seed_whatever_the_batching(meter):
    all_items = items(400)

    one_batch = run(7, [all_items])
    reversed_in_pieces = run(7, [all_items[200:][::-1], all_items[:200][::-1]])
    other_seed = run(8, [all_items])

    assert one_batch == reversed_in_pieces
    assert set(one_batch) == {"drop", "duplicate", "delay", "skew"}
    assert one_batch != other_seed
    assert all(20 <= len(ids) <= 60 for ids in one_batch.values())  # ~10% of 400


def test_a_fault_fraction_is_exact_and_in_the_unit_interval():
    value = fault_fraction(7, "drop", "id-1")

    assert isinstance(value, Decimal)
    assert 0 <= value < 1
    assert value == fault_fraction(7, "drop", "id-1")


def test_summaries_show_what_the_faults_did(meter):
    provider = SimulatedProvider(
        faults=FaultSettings(seed=3, drop_rate=Decimal("0.2"), duplicate_rate=Decimal("0.2"))
    )
    results = provider.report_usage(items(100))
    records = SimulatedUsageRecord.objects.all()
    dropped = records.filter(dropped=True, copy=0).count()
    duplicated = records.filter(copy=1).count()

    [summary] = provider.list_meter_event_summaries(
        provider_meter_id="sim_mtr_sim_calls",
        customer_id="sim_acme",
        start=NOW - timedelta(days=2),
        end=NOW + timedelta(days=1),
    )

    assert {r.status for r in results} == {ItemStatus.RECORDED}  # faults are silent
    assert dropped > 0 and duplicated > 0
    assert summary.value == 100 - dropped + duplicated


def test_delayed_usage_appears_only_after_the_delay(meter):
    clock = [NOW]
    provider = SimulatedProvider(
        faults=FaultSettings(seed=1, delay_rate=Decimal(1), delay_seconds=600),
        clock=lambda: clock[0],
    )
    provider.report_usage(items(3))
    window = {
        "provider_meter_id": "sim_mtr_sim_calls",
        "customer_id": "sim_acme",
        "start": NOW - timedelta(days=1),
        "end": NOW + timedelta(days=1),
    }

    before = list(provider.list_meter_event_summaries(**window))
    clock[0] = NOW + timedelta(seconds=601)
    after = list(provider.list_meter_event_summaries(**window))

    assert before == []
    assert after[0].value == 3


def test_skewed_usage_can_land_on_another_utc_day(meter):
    midnight = NOW.replace(hour=0, minute=0, second=0) - timedelta(days=1)
    provider = SimulatedProvider(
        faults=FaultSettings(seed=1, skew_rate=Decimal(1), skew_seconds=-60)
    )
    provider.report_usage(items(2, at=midnight + timedelta(seconds=30)))

    summaries = list(
        provider.list_meter_event_summaries(
            provider_meter_id="sim_mtr_sim_calls",
            customer_id="sim_acme",
            start=midnight - timedelta(days=1),
            end=midnight + timedelta(days=1),
        )
    )

    assert [(s.start, s.value) for s in summaries] == [(midnight - timedelta(days=1), 2)]


def test_identifiers_are_deduplicated_for_24_hours_only_like_stripe(meter):
    clock = [NOW]
    provider = SimulatedProvider(faults=FaultSettings(), clock=lambda: clock[0])

    first = provider.report_usage(items(1))
    again = provider.report_usage(items(1))
    clock[0] = NOW + timedelta(hours=25)
    after_window = provider.report_usage(items(1))

    assert [r.status for r in first + again + after_window] == [
        ItemStatus.RECORDED,
        ItemStatus.DUPLICATE,
        ItemStatus.RECORDED,
    ]
    assert SimulatedUsageRecord.objects.count() == 2  # why our ledger, not the provider, decides


def test_usage_outside_the_35_day_window_is_refused(meter):
    provider = SimulatedProvider(faults=FaultSettings())

    # The clock now, not NOW (read when the module was imported, which on a loaded machine can
    # be more than ten minutes before this test runs).
    now = datetime.now(UTC).replace(microsecond=0)
    [old] = provider.report_usage(items(1, at=now - timedelta(days=36)))
    [future] = provider.report_usage(items(1, start=1, at=now + timedelta(minutes=10)))

    assert old.status is ItemStatus.TOO_OLD
    assert future.status is ItemStatus.REJECTED and future.code == "timestamp_in_future"
    assert not SimulatedUsageRecord.objects.exists()


def test_a_configured_run_gives_reconciliation_real_mismatches(settings):
    settings.BILLING_PROVIDER = "simulated"
    simulated_faults_configure(name="first", seed=1)
    config = simulated_faults_configure(
        name="demo", seed=42, drop_rate=Decimal("0.1"), duplicate_rate=Decimal("0.1")
    )
    account = AccountFactory(external_id="sim-acme")
    calls = MeterFactory(code="sim_api", aggregation=Meter.Aggregation.COUNT)
    make_events(account, calls, Decimal(1), [hours_ago(2 + n / 100) for n in range(200)])

    pushed = usage_push()
    provider_pull()

    assert list(SimulatedFaultConfig.objects.filter(active=True)) == [config]
    assert pushed.acknowledged == 200  # the ledger believes every piece arrived ...
    stored = sum(ProviderUsageSummary.objects.values_list("value", flat=True))
    records = SimulatedUsageRecord.objects.all()
    expected = 200 - records.filter(dropped=True).count() + records.filter(copy=1).count()
    assert stored == expected != 200  # ... the provider's counts say otherwise
    assert records.filter(fault_config=config).count() == records.count()


def test_invoices_are_priced_on_what_the_provider_counted(settings):
    settings.BILLING_PROVIDER = "simulated"
    account = AccountFactory(external_id="sim-invoiced")
    calls = MeterFactory(code="sim_billed", aggregation=Meter.Aggregation.COUNT)
    plan = PlanFactory(flat_fee_minor=1000)
    PriceFactory(plan=plan, meter=calls, unit_price=Decimal("0.5"))
    subscription = SubscriptionFactory(account=account, plan=plan)
    start = NOW - timedelta(days=3)
    BillingPeriod.objects.create(
        subscription=subscription,
        account=account,
        start_date=start.date(),
        end_date=NOW.date(),
        timezone="UTC",
        starts_at=start,
        ends_at=NOW,
        state=BillingPeriod.State.CLOSED,
        currency="USD",
        closed_at=NOW,
        total_minor=0,
    )
    for n in range(4):
        make_event(account, calls, Decimal(1), start + timedelta(hours=n + 1))
    usage_push()

    result = provider_pull(provider=get_provider("simulated"))

    invoice = ProviderInvoice.objects.get(account=account)
    assert result.invoices == 1
    assert invoice.total_minor == 1000 + 200
    usage_line = invoice.lines.get(meter=calls)
    assert usage_line.quantity == 4 and usage_line.amount_minor == 200
