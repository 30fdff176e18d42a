"""An Auditor reads the audit log in a real browser: opens the log, filters it by reason, opens
an account's timeline and exports the log as CSV (the download is checked). Screenshots go to
test-output/browser/."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group

from adjustments.audit import EXPORT_FIELDS
from adjustments.models import AuditEntry
from alerts.services import alert_acknowledge
from metering.services.accounts import account_upsert
from tests.alerts.factories import AlertFactory
from tests.browser.conftest import browser, output_dir, page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "auditor-browser-9"


def _seed(django_user_model):
    maya = django_user_model.objects.create_user(
        username="maya", password="manager-browser-9", is_staff=True
    )
    maya.groups.add(Group.objects.get(name="Manager"))
    account, _ = account_upsert(
        external_id="acme", name="Acme", timezone="Asia/Kathmandu", actor=maya, reason="signup"
    )
    account_upsert(
        external_id="acme",
        name="Acme GmbH",
        timezone="Asia/Kathmandu",
        actor=maya,
        reason="legal name from ticket SUP-42",
    )
    alert = AlertFactory(account=account)
    alert_acknowledge(alert=alert, actor=maya, reason="customer confirmed a launch")
    account_upsert(external_id="other", name="Other", actor=None, reason="import")
    auditor = django_user_model.objects.create_user(
        username="ada", password=PASSWORD, is_staff=True
    )
    auditor.groups.add(Group.objects.get(name="Auditor"))
    return account


def _fits(browser_page) -> None:
    """Nothing wider than the 1400 px window, the list's own scrolling box included."""
    width = browser_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1400, f"the page is {width} px wide"
    clipped = browser_page.evaluate(
        "[...document.querySelectorAll('.results')].filter(e => e.scrollWidth > e.clientWidth)"
        ".length"
    )
    assert clipped == 0, "the list scrolls sideways"


def test_an_auditor_filters_the_log_opens_a_timeline_and_exports(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
):
    account = _seed(django_user_model)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/adjustments/auditentry/")
    page.fill("#id_username", "ada")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/adjustments/auditentry/")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == AuditEntry.objects.count()
    assert "UTC" in rows.first.inner_text()
    # Read-only: nothing to add, no actions, no checkboxes.
    assert page.locator("a.addlink").count() == 0
    assert page.locator("#changelist-form select[name=action]").count() == 0
    page.screenshot(path=str(output_dir / "audit_log.png"), full_page=True)
    _fits(page)

    reason_box = page.locator("details[data-filter-title=reason] input[type=search]")
    reason_box.fill("SUP-42")
    reason_box.press("Enter")
    page.wait_for_url("**reason=SUP-42**")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert "maya" in row and "name: Acme → Acme GmbH" in row
    page.screenshot(path=str(output_dir / "audit_log_filtered.png"), full_page=True)
    _fits(page)

    rows.first.get_by_text(f"timeline of account {account.pk}").click()
    page.wait_for_url(f"**/admin/adjustments/auditentry/timeline/{account.pk}/")
    timeline = page.inner_text("#audit-timeline")
    assert "maya changed account" in timeline and "maya changed alert" in timeline
    assert "Why: customer confirmed a launch" in timeline
    assert "Asia/Kathmandu" in timeline and "UTC" in timeline
    assert "Other" not in timeline
    page.screenshot(path=str(output_dir / "audit_timeline.png"), full_page=True)
    _fits(page)

    page.goto(f"{live_server.url}/admin/adjustments/auditentry/")
    page.select_option("#export-format", "csv")
    with page.expect_download() as download_info:
        page.click("#audit-export button[type=submit]")
    download = download_info.value
    assert download.suggested_filename.startswith("audit-log_")
    assert download.suggested_filename.endswith(".csv")
    path = output_dir / "audit_export.csv"
    download.save_as(path)
    exported = list(csv.reader(io.StringIO(path.read_text())))
    assert tuple(exported[0]) == EXPORT_FIELDS
    assert len(exported) == AuditEntry.objects.count() + 1
    assert any(
        r[EXPORT_FIELDS.index("reason")] == "legal name from ticket SUP-42" for r in exported
    )
    assert page.js_errors == []
