"""Endpoints (upsert, rotation, delete), the idempotent enqueue, the team transports and the
Celery task."""

from __future__ import annotations

import decimal
import json

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError

from notifications import tasks
from notifications.models import WebhookDelivery, WebhookEndpoint
from notifications.services import (
    NotificationFailed,
    email_notify,
    team_webhook_notify,
    webhook_deliveries_dispatch,
    webhook_delivery_resend,
    webhook_endpoint_delete,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_upsert,
    webhook_enqueue,
)
from tests.notifications.factories import WebhookEndpointFactory
from tests.notifications.receiver import Answer

pytestmark = pytest.mark.django_db


def _upsert(**overrides):
    fields = {
        "owner_key": "account:1",
        "name": "main",
        "url": "http://127.0.0.1:9/hook",
        "event_types": ["usage.spike"],
        "enabled": True,
    }
    return webhook_endpoint_upsert(**{**fields, **overrides})


def test_the_secret_is_returned_on_creation_only(django_user_model):
    actor = django_user_model.objects.create_user(username="ops")
    endpoint, secret, created = _upsert(actor=actor)
    assert created and secret.startswith("whsec_") and endpoint.secret == secret

    again, secret_again, created_again = _upsert(
        url="http://127.0.0.1:9/other", event_types=["usage.drop", "usage.drop"], actor=actor
    )
    assert (again.pk, secret_again, created_again) == (endpoint.pk, None, False)
    again.refresh_from_db()
    assert again.url == "http://127.0.0.1:9/other"
    assert again.event_types == ["usage.drop"]
    assert again.secret == secret
    assert [h.history_user for h in again.history.all()] == [actor, actor]


def test_the_history_never_holds_a_secret():
    history_fields = {f.name for f in WebhookEndpoint.history.model._meta.fields}
    assert "secret" not in history_fields
    assert "previous_secret" not in history_fields


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("name", {"name": "has space"}),
        ("name", {"name": ""}),
        ("url", {"url": "ftp://example.com/x"}),
        ("url", {"url": "not a url"}),
        ("event_types", {"event_types": []}),
        ("event_types", {"event_types": ["Usage Spike"]}),
        ("event_types", {"event_types": "usage.spike"}),
    ],
)
def test_bad_endpoint_fields_are_refused_by_field(field, overrides):
    with pytest.raises(ValidationError) as exc:
        _upsert(**overrides)
    assert field in exc.value.message_dict
    assert not WebhookEndpoint.objects.exists()


def test_disabling_cancels_pending_deliveries_and_enabling_clears_the_failure_state():
    endpoint, _, _ = _upsert()
    (delivery,) = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    _upsert(enabled=False)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.CANCELLED

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        disabled_reason=WebhookEndpoint.DisabledReason.GONE
    )
    _upsert(enabled=True)
    endpoint.refresh_from_db()
    assert endpoint.enabled
    assert (endpoint.disabled_reason, endpoint.failing_since, endpoint.disabled_at) == (
        "",
        None,
        None,
    )


def test_rotation_keeps_the_old_secret_for_the_overlap_only():
    endpoint, old, _ = _upsert()
    new = webhook_endpoint_rotate_secret(endpoint=endpoint, overlap_hours=24)
    endpoint.refresh_from_db()
    assert (endpoint.secret, endpoint.previous_secret) == (new, old)
    assert endpoint.previous_secret_expires_at is not None
    assert endpoint.history.first().history_change_reason == "secret rotated (24 h overlap)"

    newer = webhook_endpoint_rotate_secret(endpoint=endpoint, overlap_hours=0)
    endpoint.refresh_from_db()
    assert (endpoint.secret, endpoint.previous_secret) == (newer, "")


def test_deleting_an_endpoint_deletes_its_deliveries_and_keeps_a_history_record():
    endpoint, _, _ = _upsert()
    webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    webhook_endpoint_delete(endpoint=endpoint)
    assert not WebhookEndpoint.objects.exists()
    assert not WebhookDelivery.objects.exists()
    assert WebhookEndpoint.history.filter(history_type="-").count() == 1


def test_enqueue_writes_one_row_per_enabled_subscribed_endpoint_of_the_owner():
    subscribed = WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"])
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.drop"])
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"], enabled=False)
    WebhookEndpointFactory(owner_key="account:2", event_types=["usage.spike"])

    rows = webhook_enqueue(
        owner_key="account:1",
        event_type="usage.spike",
        payload={"amount": decimal.Decimal("12.50")},
        idempotency_key="alert-7",
    )

    assert [r.endpoint_id for r in rows] == [subscribed.pk]
    body = json.loads(rows[0].body)
    assert body["type"] == "usage.spike"
    assert body["data"] == {"amount": "12.50"}
    assert body["timestamp"].endswith("Z")


def test_enqueue_twice_with_the_same_idempotency_key_writes_no_new_rows(
    django_capture_on_commit_callbacks,
):
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"])
    with django_capture_on_commit_callbacks() as callbacks:
        first = webhook_enqueue(
            owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
        )
    # A second endpoint subscribing meanwhile does not make the same key write again.
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"])
    second = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={"x": 1}, idempotency_key="k"
    )
    assert [r.pk for r in second] == [r.pk for r in first]
    assert WebhookDelivery.objects.count() == 1
    # The dispatch is queued once the caller's transaction commits.
    assert len(callbacks) == 1


def test_enqueue_queues_the_dispatch_task_once_the_transaction_commits(
    monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr(tasks.webhook_deliveries_dispatch, "delay", lambda: queued.append(1))
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"])
    with django_capture_on_commit_callbacks(execute=True):
        webhook_enqueue(
            owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
        )
        assert queued == []
    assert queued == [1]


def test_the_same_key_for_another_owner_is_another_message():
    WebhookEndpointFactory(owner_key="account:1", event_types=["usage.spike"])
    WebhookEndpointFactory(owner_key="account:2", event_types=["usage.spike"])
    for owner in ("account:1", "account:2"):
        webhook_enqueue(owner_key=owner, event_type="usage.spike", payload={}, idempotency_key="k")
    assert WebhookDelivery.objects.count() == 2


def test_send_again_requeues_a_delivered_message_with_the_same_webhook_id(receiver):
    _endpoint, secret, _ = _upsert(url=receiver.url)
    receiver.secrets.append(secret)
    (delivery,) = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    webhook_deliveries_dispatch()
    assert webhook_delivery_resend(delivery=delivery) is True
    webhook_deliveries_dispatch()
    assert [r.webhook_id for r in receiver.requests] == [delivery.message_id] * 2
    assert all(r.verified == [True] for r in receiver.requests)

    _upsert(url=receiver.url, enabled=False)
    assert webhook_delivery_resend(delivery=delivery) is False


def test_the_task_sends_what_is_due(receiver):
    _endpoint, secret, _ = _upsert(url=receiver.url)
    receiver.secrets.append(secret)
    webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    assert tasks.webhook_deliveries_dispatch.apply().get() == 1
    assert len(receiver.requests) == 1


def test_the_dispatch_is_on_the_beat_schedule_every_minute():
    entry = django_settings.CELERY_BEAT_SCHEDULE["webhook-deliveries-dispatch"]
    assert entry["task"] == "notifications.tasks.webhook_deliveries_dispatch"
    assert entry["task"] == tasks.webhook_deliveries_dispatch.name
    assert entry["schedule"]._orig_minute == "*"


def test_email_goes_through_django_backend(mailoutbox):
    email_notify(to=["cs@example.com", ""], subject="Spike", body="acme x10")
    (mail,) = mailoutbox
    assert (mail.to, mail.subject, mail.body) == (["cs@example.com"], "Spike", "acme x10")
    email_notify(to=[], subject="nobody", body="")
    assert len(mailoutbox) == 1


def test_team_webhook_posts_slack_compatible_json(receiver):
    team_webhook_notify(url=receiver.url, text="acme: usage 10x its Monday normal")
    (request,) = receiver.requests
    assert json.loads(request.body) == {"text": "acme: usage 10x its Monday normal"}
    assert request.headers["content-type"] == "application/json"


def test_team_webhook_failure_raises(receiver, settings):
    receiver.answer(Answer(500, body=b"down"))
    with pytest.raises(NotificationFailed, match="500"):
        team_webhook_notify(url=receiver.url, text="x")
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(NotificationFailed, match="https"):
        team_webhook_notify(url=receiver.url, text="x")
