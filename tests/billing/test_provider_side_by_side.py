"""[9]'s side-by-side comparison during a migration: the simulated provider is the primary
(Meterops pushes to it through the ledger), the suite's Orb fake the read-only secondary (the
team's own feed writes to it; here straight through the orb-billing SDK). Reconciliation runs
once per platform with the same three numbers and causes; a fault seeded at one platform only
is found there and not at the other, and the pages and the API name the platform.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from billing.models import PushLedgerEntry
from billing.providers.base import UsageItem
from billing.providers.orb import OrbProvider
from billing.providers.simulated import FaultSettings
from billing.services.push import meter_spec
from reconciliation.models import Mismatch, ReconciliationRun
from reconciliation.services import reconciliation_run_all
from tests.metering.factories import api_key_for
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    push,
    today,
    usage_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings, orb_fake):
    """Two UTC accounts with count and sum usage over a period that ended two days ago, all
    of it pushed to the primary (no fault yet: each test pushes) and fed to Orb whole."""
    settings.BILLING_PROVIDER = "simulated"
    settings.BILLING_PROVIDER_SECONDARY = "orb"
    # The period starts 12 days back: an Orb account whose grace period covers it.
    settings.ORB_GRACE_PERIOD_HOURS = 24 * 40
    orb_fake.grace_seconds = 40 * 86_400
    meters = meters_count_sum_max()[:2]
    plan = plan_for(meters)
    writer = OrbProvider(api_key=orb_fake.api_key, api_base=orb_fake.url)
    for meter in meters:
        writer.ensure_meter(spec=meter_spec(meter))
    accounts = []
    for n in range(2):
        account, period = account_with_period(
            external_id=f"sbs-{n}",
            tz="UTC",
            plan=plan,
            start=today() - timedelta(days=12),
            end=today() - timedelta(days=2),
        )
        events = [e for m in meters for e in usage_for(account, m, period, per_day=2)]
        ingest(events)
        writer.ensure_customer(external_id=account.external_id, name=account.name)
        orb_fake.subscribe(account.external_id)
        writer.report_usage(
            [
                UsageItem(
                    f"team-{e.transaction_id}",
                    f"team-{e.transaction_id}",
                    meter_spec(e.meter).event_name,
                    account.external_id,
                    e.value,
                    e.occurred_at,
                )
                for e in events
            ]
        )
        accounts.append(account)
    return {"fake": orb_fake, "accounts": accounts, "meters": meters}


def _drop_at_orb(fake, customer: str) -> Decimal:
    """Every third event of the customer's at Orb lost (as if never ingested); returns how
    many of the count meter's events went."""
    with fake.lock:
        mine = [e for e in fake.events if e.customer == customer]
        for event in mine[::3]:
            event.deprecated = True
        return Decimal(sum(1 for e in mine[::3] if e.event_name == "mo_calls"))


def _open(provider: str) -> dict[tuple[str, str], Mismatch]:
    return {
        (m.account.external_id, m.meter.code): m
        for m in Mismatch.objects.filter(provider=provider, status="open").select_related(
            "account", "meter"
        )
    }


def test_a_fault_at_the_secondary_only_is_found_there_and_not_at_the_primary(world, admin_client):
    push()  # the primary takes everything
    dropped = _drop_at_orb(world["fake"], "sbs-0")

    total, runs = reconciliation_run_all(pull=True, trigger="test")

    assert {r.provider for r in runs} == {"simulated", "orb"}
    assert all(r.status == ReconciliationRun.Status.DONE for r in runs)
    assert total.accounts == 2 and total.cells == 2 * 2 * 2  # two platforms
    assert _open("simulated") == {}
    at_orb = _open("orb")
    assert set(at_orb) == {("sbs-0", "calls"), ("sbs-0", "storage")}
    calls = at_orb[("sbs-0", "calls")]
    assert calls.top_cause == "provider_missing"
    assert calls.delta == dropped > 0
    # No push ledger at Orb: reported stands in as ours, nothing pending, the gap all Orb's.
    assert calls.reported == calls.ours and calls.pending == 0 and calls.delta_reported == 0
    assert not PushLedgerEntry.objects.filter(provider="orb").exists()
    assert calls.days.exists()  # Orb reads per UTC day: the per-day drill-down is kept

    # The queue names each platform's count side by side, and filters by platform.
    queue = admin_client.get(reverse("admin:reconciliation_mismatch_changelist")).content.decode()
    assert "Simulated: 0 mismatches" in queue and "Orb (read-only): 2 mismatches" in queue
    only_primary = admin_client.get(
        reverse("admin:reconciliation_mismatch_changelist") + "?provider__exact=simulated"
    ).content.decode()
    assert f"/{calls.pk}/change/" not in only_primary
    # The mismatch page names the platform and shows the cell on both.
    page = admin_client.get(reverse("admin:reconciliation_mismatch_change", args=[calls.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    assert 'id="recon-platform">Orb</strong> (read-only, side by side)' in body
    assert 'id="recon-side-by-side"' in body and 'id="recon-side-days"' in body
    assert "none: within the threshold at its last run" in body  # the primary's row
    assert "n/a (read-only platform" in body
    assert "Re-push failed usage" not in body  # nothing of ours goes to Orb
    # The account page's mismatches section says it per platform.
    hub = admin_client.get(
        reverse("admin:metering_account_change", args=[calls.account_id])
    ).content.decode()
    assert 'id="hub-mismatch-platforms">Simulated: 0, Orb: 2</p>' in hub


def test_a_fault_at_the_primary_only_is_found_there_and_not_at_the_secondary(
    world, api_client, django_assert_max_num_queries
):
    push(FaultSettings(seed=9, drop_rate=Decimal("0.3")))  # Orb keeps everything

    _total, runs = reconciliation_run_all(pull=True, trigger="test")

    assert {r.provider for r in runs} == {"simulated", "orb"}
    assert _open("orb") == {}
    at_primary = _open("simulated")
    assert len(at_primary) == 4  # both meters of both accounts lost some usage
    assert {m.top_cause for m in at_primary.values()} == {"provider_missing"}
    assert all(m.delta > 0 and m.reported == m.ours for m in at_primary.values())

    # The API names the platform of each result (a field added; `provider` stays the number).
    _, raw = api_key_for("read")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    url = "/api/v1/reconciliation/mismatches"
    with django_assert_max_num_queries(5):
        results = api_client.get(url).json()["results"]
    assert {r["platform"] for r in results} == {"simulated"} and len(results) == 4
    assert all(Decimal(r["provider"]) < Decimal(r["ours"]) for r in results)
    assert api_client.get(url, {"platform": "orb"}).json()["results"] == []


def test_a_reconciled_cell_is_kept_per_platform_and_a_rerun_changes_nothing(world):
    push(FaultSettings(seed=9, drop_rate=Decimal("0.3")))
    _drop_at_orb(world["fake"], "sbs-1")
    reconciliation_run_all(pull=True, trigger="test")
    before = {
        (m.provider, m.account_id, m.meter_id): (m.pk, m.delta) for m in Mismatch.objects.all()
    }
    both = {(a, m) for p, a, m in before if p == "orb"} & {
        (a, m) for p, a, m in before if p == "simulated"
    }
    assert both  # sbs-1's cells are off at both platforms, each with its own mismatch

    out = StringIO()
    call_command("reconcile", stdout=out)  # each platform in turn, the secondary's named

    text = out.getvalue()
    assert text.startswith("[2/2 accounts] 4 cell(s), 0 opened, 0 updated, 0 resolved")
    assert "[orb, read-only] [2/2 accounts] 4 cell(s), 0 opened, 0 updated, 0 resolved" in text
    # Cells are counted per platform: two accounts × two meters × two platforms.
    assert "Reconciled 2 account(s), 4 period(s), 8 cell(s)" in text
    assert "0 mismatch(es) opened, 0 updated, 0 resolved" in text
    after = {
        (m.provider, m.account_id, m.meter_id): (m.pk, m.delta) for m in Mismatch.objects.all()
    }
    assert after == before


def test_a_coarser_secondary_decides_the_common_window_on_the_mismatch_page(settings, admin_client):
    """Lago reads usage back per billing period only: side by side with a per-day primary, the
    finest window both share is the period, and the page says so."""
    settings.BILLING_PROVIDER = "simulated"
    settings.BILLING_PROVIDER_SECONDARY = ""
    meters = meters_count_sum_max()[:1]
    account, period = account_with_period(
        external_id="sbs-lago",
        tz="UTC",
        plan=plan_for(meters),
        start=today() - timedelta(days=12),
        end=today() - timedelta(days=2),
    )
    ingest(usage_for(account, meters[0], period, per_day=2))
    push(FaultSettings(seed=9, drop_rate=Decimal("0.3")))
    reconciliation_run_all(pull=True, trigger="test")
    mismatch = Mismatch.objects.get(provider="simulated")
    url = reverse("admin:reconciliation_mismatch_change", args=[mismatch.pk])
    assert 'id="recon-side-by-side"' not in admin_client.get(url).content.decode()

    settings.BILLING_PROVIDER_SECONDARY = "lago"
    body = admin_client.get(url).content.decode()

    assert 'id="recon-side-by-side"' in body and 'id="recon-side-days"' not in body
    assert "Lago only offers the billing period as a window" in body
    assert "finest window they have in common" in body
    # The primary's own drill-down stays per UTC day (it reads per day itself).
    assert 'id="recon-window-note"' not in body and 'id="recon-days"' in body
