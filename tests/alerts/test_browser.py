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


def test_support_agent_acknowledges_an_alert_with_a_label(
    live_server,
    page,  # noqa: F811
    output_dir,  # noqa: F811
    django_user_model,
):
    acct, meter = account(external_id="acme-corp", name="Acme Corp"), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: {"/v1/items": 800, "/v1/search": 200})
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: {"/v1/items": 800, "/v1/search": 9_200})
    alerts_evaluate_all(at=at(TODAY, 20))
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
    page.click(f"#result_list a:text('{alert.pk}')")
    page.wait_for_url(f"**/admin/alerts/alert/{alert.pk}/change/")
    page.wait_for_selector("#alert-chart .main-svg")
    body = page.inner_text("body")
    assert "10.00x a normal Wednesday" in body
    assert "/v1/search" in body and "Usage dashboard" in body
    page.screenshot(path=str(output_dir / "alerts-alert-page.png"), full_page=True)

    page.select_option("#id_label", "expected")
    page.fill("#id_reason", "Customer announced a reindex")
    page.click("button[value=acknowledge]")
    page.wait_for_selector("ul.messagelist")
    page.screenshot(path=str(output_dir / "alerts-acknowledged.png"), full_page=True)
    alert.refresh_from_db()
    assert (alert.status, alert.label, alert.assignee) == ("acknowledged", "expected", user)
    assert page.js_errors == []
