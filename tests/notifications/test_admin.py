"""The webhook admin, by role: every role reads, the secret is never shown, a Manager changes an
endpoint with a reason and sends a delivery again; the others get a 403."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from notifications.models import WebhookDelivery, WebhookEndpoint
from notifications.services import webhook_enqueue
from tests.notifications.factories import WebhookEndpointFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model):
    def make(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=role.lower(), password="x-irrelevant-9", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def delivered() -> WebhookDelivery:
    endpoint = WebhookEndpointFactory(owner_key="account:1")
    (delivery,) = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={"a": 1}, idempotency_key="k"
    )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status=WebhookDelivery.Status.DELIVERED, next_attempt_at=None
    )
    assert delivery.endpoint == endpoint
    return delivery


@pytest.mark.parametrize("role", ["Support", "Manager", "Auditor"])
def test_every_role_reads_endpoints_deliveries_and_attempts_and_never_sees_a_secret(
    staff, role, delivered, django_assert_max_num_queries
):
    client = staff(role)
    endpoint = delivered.endpoint
    pages = [
        reverse("admin:notifications_webhookendpoint_changelist"),
        reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk]),
        reverse("admin:notifications_webhookendpoint_history", args=[endpoint.pk]),
        reverse("admin:notifications_webhookdelivery_changelist"),
        reverse("admin:notifications_webhookdelivery_change", args=[delivered.pk]),
        reverse("admin:notifications_webhookattempt_changelist"),
    ]
    for url in pages:
        with django_assert_max_num_queries(25):
            response = client.get(url)
        assert response.status_code == 200, url
        assert endpoint.secret not in response.content.decode()
        assert endpoint.secret.removeprefix("whsec_") not in response.content.decode()


def test_an_auditor_sees_the_endpoint_read_only(staff, delivered):
    response = staff("Auditor").get(
        reverse("admin:notifications_webhookendpoint_change", args=[delivered.endpoint.pk])
    )
    assert b'name="url"' not in response.content


def test_a_manager_changes_an_endpoint_with_a_reason_recorded_in_the_history(staff):
    endpoint = WebhookEndpointFactory(enabled=False, disabled_reason="gone")
    client = staff("Manager")
    url = reverse("admin:notifications_webhookendpoint_change", args=[endpoint.pk])
    form = {
        "url": "http://127.0.0.1:9/new",
        "event_types": '["usage.spike", "usage.drop"]',
        "enabled": "on",
    }
    refused = client.post(url, form)
    assert refused.status_code == 200  # the form again: the reason is required
    response = client.post(url, {**form, "change_reason": "customer fixed the receiver"})
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.disabled_reason == ""
    assert endpoint.event_types == ["usage.spike", "usage.drop"]
    record = endpoint.history.first()
    assert record.history_change_reason == "customer fixed the receiver"
    assert record.history_user.username == "manager"


def test_a_manager_sends_a_delivery_again_with_the_same_webhook_id(staff, delivered):
    response = staff("Manager").post(
        reverse("admin:notifications_webhookdelivery_changelist"),
        {"action": "send_again", "_selected_action": [delivered.pk]},
    )
    assert response.status_code == 302
    message_id = delivered.message_id
    delivered.refresh_from_db()
    assert delivered.status == WebhookDelivery.Status.PENDING
    assert delivered.message_id == message_id


@pytest.mark.parametrize("role", ["Support", "Auditor"])
def test_send_again_is_refused_without_its_permission(staff, role, delivered):
    response = staff(role).post(
        reverse("admin:notifications_webhookdelivery_changelist"),
        {"action": "send_again", "_selected_action": [delivered.pk]},
    )
    assert response.status_code == 403
    delivered.refresh_from_db()
    assert delivered.status == WebhookDelivery.Status.DELIVERED


def test_endpoints_are_not_added_from_the_admin(staff):
    assert (
        staff("Manager").get(reverse("admin:notifications_webhookendpoint_add")).status_code == 403
    )
    assert WebhookEndpoint.objects.count() == 0
