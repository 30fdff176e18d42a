"""The alert queue, the alert page and the rule page in the admin, with permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from alerts.models import Alert
from tests.alerts.factories import AlertFactory
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, usage
from tests.metering.factories import AccountFactory

pytestmark = pytest.mark.django_db

QUEUE = "/admin/alerts/alert/"


def staff_client(django_user_model, *perms: str, username: str = "agent") -> tuple[Client, object]:
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    codenames = ["view_alert", "view_alertrule", *perms]
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="alerts", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client, user


def test_queue_lists_unresolved_alerts_by_default_with_filters(
    django_user_model, django_assert_max_num_queries
):
    client, _ = staff_client(django_user_model)
    open_alert = AlertFactory(account=AccountFactory(external_id="acme", tier="enterprise"))
    resolved = AlertFactory(status=Alert.Status.RESOLVED)
    for _ in range(10):
        AlertFactory()
    with django_assert_max_num_queries(14):
        page = client.get(QUEUE)
    assert page.status_code == 200
    ids = [a.pk for a in page.context["cl"].result_list]
    assert open_alert.pk in ids and resolved.pk not in ids
    enterprise = client.get(QUEUE, {"tier": "enterprise", "kind": "spike", "age": "old"})
    assert [a.pk for a in enterprise.context["cl"].result_list] == [open_alert.pk]
    assert [a.pk for a in client.get(QUEUE, {"status": "resolved"}).context["cl"].result_list] == [
        resolved.pk
    ]


def test_acknowledge_action_needs_its_permission(django_user_model):
    alert = AlertFactory()
    viewer, _ = staff_client(django_user_model, username="viewer")
    post = {"action": "acknowledge_selected", "_selected_action": [alert.pk], "reason": ""}
    assert viewer.post(QUEUE, post).status_code == 403
    agent, user = staff_client(django_user_model, "acknowledge_alert")
    assert agent.post(QUEUE, post).status_code == 302
    alert.refresh_from_db()
    assert alert.status == Alert.Status.ACKNOWLEDGED and alert.assignee == user
    last = alert.history.first()
    assert last.history_user == user and last.history_change_reason.startswith("Acknowledged")


def test_resolve_action_needs_a_reason_and_records_it_with_the_label(django_user_model):
    alert = AlertFactory()
    agent, user = staff_client(django_user_model, "resolve_alert")
    base = {"action": "resolve_selected", "_selected_action": [alert.pk]}
    agent.post(QUEUE, {**base, "reason": ""})
    alert.refresh_from_db()
    assert alert.status == Alert.Status.OPEN
    agent.post(QUEUE, {**base, "reason": "Customer ran a planned backfill", "label": "planned"})
    alert.refresh_from_db()
    assert (alert.status, alert.label) == (Alert.Status.RESOLVED, "planned")
    assert alert.resolution_reason == "Customer ran a planned backfill"
    assert alert.history.first().history_user == user


def test_snooze_and_label_actions(django_user_model):
    alert = AlertFactory()
    agent, _ = staff_client(django_user_model, "snooze_alert", "label_alert")
    selected = {"_selected_action": [alert.pk]}
    agent.post(QUEUE, {**selected, "action": "snooze_selected", "snooze_days": "3"})
    agent.post(QUEUE, {**selected, "action": "label_selected", "label": "false_alarm"})
    alert.refresh_from_db()
    assert alert.status == Alert.Status.SNOOZED and alert.snoozed_until is not None
    assert alert.label == "false_alarm"


def test_alert_page_shows_the_context_and_a_chart_with_the_band(django_user_model):
    acct, meter = account(external_id="acme"), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY + ONE_DAY, lambda d: 1000)
    alert = AlertFactory(account=acct, meter=meter)
    agent, _ = staff_client(django_user_model, "acknowledge_alert", "label_alert")
    page = agent.get(reverse("admin:alerts_alert_change", args=[alert.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert alert.message in html
    assert "/v1/search" in html  # the driver
    assert "Usage dashboard" in html
    assert 'id="alert-chart"' in html and "Expected band (same weekday)" in html
    assert "Acknowledge (assign to me)" in html and 'value="resolve"' not in html


def test_alert_page_buttons_acknowledge_with_a_label_and_check_permissions(django_user_model):
    alert = AlertFactory()
    url = reverse("admin:alerts_alert_act", args=[alert.pk])
    viewer, _ = staff_client(django_user_model, username="viewer")
    assert viewer.post(url, {"do": "acknowledge"}).status_code == 403
    agent, user = staff_client(django_user_model, "acknowledge_alert", "label_alert")
    assert agent.post(url, {"do": "acknowledge", "label": "expected"}).status_code == 302
    alert.refresh_from_db()
    assert (alert.status, alert.assignee, alert.label) == ("acknowledged", user, "expected")


def test_rule_page_shows_how_its_alerts_were_labelled(django_user_model):
    AlertFactory(label="false_alarm", status=Alert.Status.RESOLVED)
    AlertFactory(label="false_alarm", status=Alert.Status.RESOLVED)
    alert = AlertFactory(label="expected")
    client, _ = staff_client(django_user_model)
    page = client.get(reverse("admin:alerts_alertrule_change", args=[alert.rule_id]))
    html = page.content.decode()
    assert "False alarm: <strong>2</strong>" in html
    assert "Expected: <strong>1</strong>" in html
    rules = client.get("/admin/alerts/alertrule/").content.decode()
    assert "default-spike" in rules
