"""In a real browser: Support requests a credit above the limit from the account page (with the
preview), a Manager approves it, and the projected invoice shows the credit line.
Screenshots go to test-output/browser/."""

from __future__ import annotations

import pytest
from django.urls import reverse

from adjustments.models import Adjustment
from billing.models import SimulatedCredit
from tests.adjustments.support import scenario
from tests.browser.conftest import browser, output_dir, page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "adjust-browser-9"


def _user(django_user_model, name: str, role: str):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user(username=name, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def _login(tab, live_server, name: str, next_url: str) -> None:
    tab.context.clear_cookies()
    tab.goto(f"{live_server.url}/admin/login/?next={next_url}")
    tab.fill("#id_username", name)
    tab.fill("#id_password", PASSWORD)
    tab.click("input[type=submit]")
    tab.wait_for_url(f"**{next_url}")


def test_support_requests_a_credit_a_manager_approves_it_and_the_projection_shows_it(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
):
    s = scenario(per_day=600)  # 600.00 USD so far
    _user(django_user_model, "sue", "Support")
    _user(django_user_model, "max", "Manager")

    account_url = reverse("admin:metering_account_change", args=[s.account.pk])
    _login(page, live_server, "sue", account_url)
    page.click("a.request-adjustment-link")
    page.wait_for_selector("#adjustment-request")
    page.fill("#id_amount", "250.00")
    page.select_option("#id_reason_code", "outage_sla")
    page.fill("#id_note", "Search API down for 3 hours on the 1st")
    page.fill("#id_ticket", "ZD-1042")
    page.click("input[name=_preview]")
    preview = page.inner_text("#adjustment-preview")
    assert "$600.00" in preview and "$350.00" in preview
    assert "needs a Manager" in preview
    page.screenshot(path=str(output_dir / "adjustment_preview.png"), full_page=True)
    page.click("input[name=_submit]")
    page.wait_for_selector("ul.messagelist li")
    assert "waits for a Manager" in page.inner_text("ul.messagelist")
    adjustment = Adjustment.objects.get()
    assert adjustment.status == Adjustment.Status.REQUESTED
    # Support sees no approve button on its own request.
    assert page.locator("#adjustment-approve").count() == 0
    page.screenshot(path=str(output_dir / "adjustment_requested.png"), full_page=True)

    change_url = reverse("admin:adjustments_adjustment_change", args=[adjustment.pk])
    _login(page, live_server, "max", change_url)
    assert "sue" in page.inner_text("#adjustment-summary")
    page.click("#adjustment-approve")
    page.wait_for_selector("ul.messagelist li.success")
    summary = page.inner_text("#adjustment-summary")
    assert "Applied" in summary and "max" in summary
    page.screenshot(path=str(output_dir / "adjustment_approved.png"), full_page=True)
    assert SimulatedCredit.objects.get().amount_minor == 250_00

    page.goto(live_server.url + reverse("admin:billing_projection_panel", args=[s.account.pk]))
    credit_row = page.locator("tr.projection-credit")
    assert credit_row.count() == 1
    assert "-$250.00" in credit_row.inner_text()
    assert page.inner_text("#projection-to-date") == "$350.00"
    page.screenshot(path=str(output_dir / "adjustment_projection.png"), full_page=True)
    assert page.js_errors == []
