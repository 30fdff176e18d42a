"""A Support agent works an alert in a real browser: the queue, the alert page with its context
and chart, acknowledging it with a label. Screenshots go to test-output/browser/."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission

from alerts.models import Alert
from alerts.services import alerts_evaluate_all
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, at, usage
from tests.browser.conftest import browser, output_dir, page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

PASSWORD = "support-alerts-9"
ZONE = "Asia/Kolkata"
VIEWPORT_WIDTH = 1400  # the page fixture's


def _overflow(tab) -> dict:
    """How wide the document is, and the right edge of the chart's drawing."""
    return tab.evaluate(
        """() => ({
            document: document.documentElement.scrollWidth,
            chart: Math.ceil(document.querySelector("#alert-chart .main-svg")
                .getBoundingClientRect().right),
        })"""
    )


def test_support_agent_acknowledges_an_alert_with_a_label(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
):
    # A zone away from UTC: the page must speak of the account's local days.
    acct = account(external_id="acme-corp", name="Acme Corp", timezone=ZONE)
    meter = api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: {"/v1/items": 800, "/v1/search": 200})
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: {"/v1/items": 800, "/v1/search": 9_200})
    alerts_evaluate_all(at=at(TODAY, 20, tz=ZONE))
    alert = Alert.objects.get()

    user = django_user_model.objects.create_user("sam", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))
    # What the Support role needs on alerts (the roles module grants it at merge).
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="alerts",
            codename__in=["view_alert", "view_alertrule", "acknowledge_alert", "label_alert"],
        )
    )

    page.goto(f"{live_server.url}/admin/login/?next=/admin/alerts/alert/")
    page.fill("#id_username", "sam")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/alerts/alert/")
    page.screenshot(path=str(output_dir / "alerts-queue.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT_WIDTH
    # Every column in view: the list does not scroll sideways inside its box either.
    assert page.evaluate(
        "(() => { const r = document.querySelector('.results');"
        " return r.scrollWidth <= r.clientWidth; })()"
    )
    assert "10,000 API calls" in page.inner_text("#result_list")
    page.click(f"#result_list a:text('{alert.pk}')")
    page.wait_for_url(f"**/admin/alerts/alert/{alert.pk}/change/")
    page.wait_for_selector("#alert-chart .main-svg")
    # The admin's sidebar opens after the chart is drawn (its script is deferred); the chart
    # must follow it, so wait for the chart to fit the narrowed column.
    assert page.is_visible("#nav-sidebar")
    page.wait_for_function(
        "document.querySelector('#alert-chart .main-svg').getBoundingClientRect().right"
        " <= document.getElementById('alert-chart-module').getBoundingClientRect().right + 1"
    )
    widths = _overflow(page)
    assert widths["document"] <= VIEWPORT_WIDTH, widths
    assert widths["chart"] <= VIEWPORT_WIDTH, widths
    body = page.inner_text("body")
    assert "10.00x a normal Wednesday" in body
    assert "/v1/search" in body and "Usage dashboard" in body
    # Every number with its unit, days and times with their zone.
    assert "10,000 API calls" in body and "1,000 API calls" in body
    assert "9,200 API calls (usually 200 API calls, +9,000 API calls)" in body
    assert f"2024-03-20 (local day, {ZONE})" in body
    assert "10× the baseline" in body
    chart_text = page.text_content("#alert-chart .main-svg")
    assert page.text_content("#alert-chart .xtitle") == f"Local day ({ZONE})"
    assert f"({ZONE})" in page.text_content("#alert-chart .gtitle")
    assert "UTC" not in chart_text
    assert page.text_content("#alert-chart .ytitle") == "API calls"
    page.screenshot(path=str(output_dir / "alerts-alert-page.png"), full_page=True)

    page.select_option("#id_label", "expected")
    page.fill("#id_reason", "Customer announced a reindex")
    page.click("button[value=acknowledge]")
    page.wait_for_selector("ul.messagelist")
    page.screenshot(path=str(output_dir / "alerts-acknowledged.png"), full_page=True)
    page.goto(f"{live_server.url}/admin/alerts/alert/")
    row = page.inner_text("#result_list tbody tr")
    assert "Acknowledged" in row and "→ sam" in row and "Expected" in row
    page.screenshot(path=str(output_dir / "alerts-queue-acknowledged.png"), full_page=True)
    alert.refresh_from_db()
    assert (alert.status, alert.label, alert.assignee) == ("acknowledged", "expected", user)
    assert page.js_errors == []
