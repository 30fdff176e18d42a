"""A Manager sees a billing hold and its 35-day warning on the account page, and releases it
there, in a real browser. Screenshots go to test-output/browser/."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from alerts.models import BillingHold
from alerts.services import billing_hold_open
from metering.models import Meter, UsageEvent
from metering.services.rollups import rollup_drain
from tests.billing.projection_scenarios import count_scenario
from tests.browser.conftest import browser, output_dir, page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "manager-holds-9"


def test_a_manager_releases_a_hold_from_the_account_page(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
    settings,
):
    settings.BILLING_HOLD_WARN_DAYS = 30
    now = timezone.now()
    scenario = count_scenario(started=(now - timedelta(days=40)).date(), now=now)
    account = scenario.account
    assert scenario.meter.aggregation == Meter.Aggregation.COUNT
    UsageEvent.objects.create(
        account=account,
        meter=scenario.meter,
        transaction_id="held-1",
        occurred_at=now - timedelta(days=31),
        received_at=now,
        value=1,
        properties={},
        content_hash=hashlib.sha256(b"held-1").digest(),
    )
    rollup_drain()
    hold = billing_hold_open(
        account=account, alert=None, at=now - timedelta(days=31), reason="Invoice 4x last month"
    )
    user = django_user_model.objects.create_user("mia", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Manager"))

    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/metering/account/{account.pk}/change/")
    page.fill("#id_username", "mia")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#billing-hold")
    warning = page.inner_text("#billing-hold-window-warning")
    assert "31 days old" in warning and "35-day window" in warning and "UTC" in warning
    page.screenshot(path=str(output_dir / "hold-account-page.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/billing/projectionsnapshot/account/{account.pk}/")
    assert "Billing held since" in page.inner_text("#projection-billing-hold")
    page.screenshot(path=str(output_dir / "hold-projected-invoice.png"), full_page=True)

    page.goto(f"{live_server.url}/admin/metering/account/{account.pk}/change/")
    page.fill("#billing-hold-reason", "Customer confirmed the batch job")
    page.select_option("#billing-hold-release select[name=mode]", "push_and_credit")
    page.fill("#billing-hold-credit", "25.00")
    page.click("#billing-hold-release input[type=submit]")
    page.wait_for_selector("ul.messagelist")
    assert "released" in page.inner_text("ul.messagelist")
    assert page.locator("#billing-hold").count() == 0
    page.screenshot(path=str(output_dir / "hold-released.png"), full_page=True)
    hold.refresh_from_db()
    assert (hold.status, hold.release_mode, hold.released_by) == (
        BillingHold.Status.RELEASED,
        "push_and_credit",
        user,
    )
    assert page.js_errors == []
