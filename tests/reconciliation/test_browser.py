"""A Manager works the reconciliation queue in a real browser: opens the queue, opens the top
mismatch, sees the per-day table and the chart, re-pushes, resolves with a reason.
Screenshots go to test-output/browser/."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission

from billing.models import PushLedgerEntry
from billing.money import format_money
from billing.providers.simulated import FaultSettings, SimulatedProvider
from billing.services.push import push_ledger_enqueue
from reconciliation.models import Mismatch
from reconciliation.permissions import MANAGER_PERMISSIONS
from reconciliation.services import reconciliation_run
from tests.browser.conftest import browser, output_dir, page  # noqa: F401  (fixtures)
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    push,
    today,
    usage_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "manager-browser-9"


def _seed():
    meters = meters_count_sum_max()
    plan = plan_for(meters)
    accounts = []
    for name in ("failing", "dropping"):
        account, period = account_with_period(
            external_id=name,
            tz="Asia/Kolkata",
            plan=plan,
            start=today() - timedelta(days=32),
            end=today() - timedelta(days=2),
        )
        ingest([e for m in meters[:2] for e in usage_for(account, m, period)])
        accounts.append(account)
    push_ledger_enqueue(provider_name="simulated")
    failing = PushLedgerEntry.objects.filter(account=accounts[0], meter=meters[0])
    PushLedgerEntry.objects.filter(pk__in=list(failing.values_list("pk", flat=True)[:60])).update(
        status="failed"
    )
    push(FaultSettings(seed=4, drop_rate=Decimal("0.1")))
    for account in accounts:
        reconciliation_run(account=account, provider=SimulatedProvider())


def _manager(django_user_model):
    group = Group.objects.get(name="Manager")
    for dotted in MANAGER_PERMISSIONS:
        app_label, codename = dotted.split(".")
        group.permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    user = django_user_model.objects.create_user(username="maya", password=PASSWORD, is_staff=True)
    user.groups.add(group)
    return user


def test_a_manager_works_the_top_mismatch_of_the_queue(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
):
    _seed()
    _manager(django_user_model)
    top = Mismatch.objects.order_by("-delta_amount_minor").first()
    assert (top.account.external_id, top.meter.code, top.top_cause) == (
        "failing",
        "calls",
        "not_pushed",
    )

    page.goto(f"{live_server.url}/admin/login/?next=/admin/reconciliation/mismatch/")
    page.fill("#id_username", "maya")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/reconciliation/mismatch/")
    first_row = page.locator("#result_list tbody tr").first
    row = first_row.inner_text()
    assert format_money(top.delta_amount_minor, "USD") in row and "Not pushed" in row
    page.screenshot(path=str(output_dir / "reconciliation_queue.png"), full_page=True)

    first_row.locator("th a").first.click()
    page.wait_for_url(f"**/admin/reconciliation/mismatch/{top.pk}/change/")
    page.wait_for_selector("#mismatch-days .main-svg")
    assert page.locator("#mismatch-days .trace.bars").count() == 3
    assert page.locator("#recon-days tbody tr").count() == 33
    assert "60 calls of this period are still in the push ledger" in page.inner_text(
        "#recon-causes"
    )
    assert "Failed (needs a person)" in page.inner_text("#recon-ledger")
    page.screenshot(path=str(output_dir / "reconciliation_mismatch.png"), full_page=True)
    page.locator("#mismatch-days").screenshot(
        path=str(output_dir / "reconciliation_mismatch_chart.png")
    )

    page.select_option("#id_action", "repush")
    page.fill("#id_reason", "provider outage on the 3rd")
    page.click("input[name=_act]")
    page.wait_for_selector("ul.messagelist li.success")
    assert "60 failed ledger entr(ies) will be sent" in page.inner_text("ul.messagelist")

    page.select_option("#id_action", "resolve")
    page.select_option("#id_resolution", "repushed")
    page.fill("#id_reason", "re-sent after the outage")
    page.click("input[name=_act]")
    page.wait_for_selector("ul.messagelist li.success")
    assert page.inner_text("#recon-status") == "Resolved"
    history = page.inner_text("#recon-history")
    assert "Resolved (repushed): re-sent after the outage" in history and "maya" in history
    page.screenshot(path=str(output_dir / "reconciliation_resolved.png"), full_page=True)
    assert not PushLedgerEntry.objects.filter(status="failed").exists()
    assert page.js_errors == []


def test_the_mismatch_page_says_when_the_platform_reads_back_per_period_only(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
    settings,
):
    _seed()
    _manager(django_user_model)
    top = Mismatch.objects.order_by("-delta_amount_minor").first()
    # Lago's read-back window is the billing period; the note follows the mismatch's own
    # platform (with a read-only secondary, each platform has its own mismatches).
    settings.BILLING_PROVIDER = "lago"
    Mismatch.objects.filter(pk=top.pk).update(provider="lago")

    page.goto(
        f"{live_server.url}/admin/login/?next=/admin/reconciliation/mismatch/{top.pk}/change/"
    )
    page.fill("#id_username", "maya")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**/admin/reconciliation/mismatch/{top.pk}/change/")

    note = page.locator("#recon-window-note")
    assert note.is_visible()
    assert "Lago reads usage back per billing period only, never per day" in note.inner_text()
    box = note.bounding_box()
    assert box is not None and box["x"] + box["width"] <= page.viewport_size["width"]
    page.screenshot(
        path=str(output_dir / "reconciliation_mismatch_lago_window.png"), full_page=True
    )
