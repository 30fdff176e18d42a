"""Customer webhooks end to end, against a real HTTP receiver on 127.0.0.1 that verifies every
signature with the `standardwebhooks` package."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from notifications import services
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.services import (
    RETRY_SCHEDULE,
    webhook_deliveries_dispatch,
    webhook_endpoint_rotate_secret,
    webhook_endpoint_upsert,
    webhook_enqueue,
)
from notifications.signals import webhook_endpoint_disabled
from tests.notifications.receiver import Answer

pytestmark = pytest.mark.django_db

OWNER = "account:1"


def _endpoint(receiver, *, name="main", event_types=("usage.spike",)) -> WebhookEndpoint:
    endpoint, secret, created = webhook_endpoint_upsert(
        owner_key=OWNER, name=name, url=receiver.url, event_types=list(event_types), enabled=True
    )
    assert created and secret.startswith("whsec_")
    receiver.secrets.append(secret)
    return endpoint


def _enqueue(key="alert-1:level-1", payload=None) -> WebhookDelivery:
    (delivery,) = webhook_enqueue(
        owner_key=OWNER,
        event_type="usage.spike",
        payload=payload or {"meter": "api_calls", "multiple": "10.0"},
        idempotency_key=key,
    )
    return delivery


def test_a_delivery_arrives_with_standard_webhooks_headers_that_verify(receiver):
    _endpoint(receiver)
    delivery = _enqueue()

    assert webhook_deliveries_dispatch() == 1

    (request,) = receiver.requests
    assert request.verified == [True]
    assert request.webhook_id == delivery.message_id
    assert request.webhook_id.startswith("msg_")
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert body["type"] == "usage.spike"
    assert body["data"] == {"meter": "api_calls", "multiple": "10.0"}
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.delivered_at is not None
    (attempt,) = delivery.attempts.all()
    assert attempt.outcome == WebhookAttempt.Outcome.SUCCESS
    assert attempt.status_code == 200
    assert attempt.response_excerpt == "ok"
    assert attempt.duration_ms >= 0


def test_a_500_is_retried_5_seconds_later_with_the_same_webhook_id(receiver):
    _endpoint(receiver)
    delivery = _enqueue()
    receiver.answer(Answer(500, body=b"boom " * 400))
    t0 = timezone.now()

    webhook_deliveries_dispatch(now=t0)
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.next_attempt_at == t0 + dt.timedelta(seconds=5)
    assert webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=4)) == 0
    assert webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=5)) == 1

    first, second = receiver.requests
    assert first.webhook_id == second.webhook_id == delivery.message_id
    assert first.verified == second.verified == [True]
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    failed, ok = delivery.attempts.order_by("attempt_number")
    assert (failed.attempt_number, failed.status_code, failed.outcome) == (1, 500, "http_error")
    # The excerpt keeps at most 1 KB of the 2 KB answer.
    assert len(failed.response_excerpt.encode()) == 1024
    assert (ok.attempt_number, ok.status_code) == (2, 200)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_429_and_503_is_honoured(receiver, status):
    _endpoint(receiver)
    delivery = _enqueue()
    receiver.answer(Answer(status, headers={"Retry-After": "120"}))
    t0 = timezone.now()

    webhook_deliveries_dispatch(now=t0)
    delivery.refresh_from_db()
    # The schedule alone would retry after 5 s; the receiver asked for 120.
    assert delivery.next_attempt_at == t0 + dt.timedelta(seconds=120)
    assert webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=60)) == 0
    assert webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=120)) == 1

    assert len(receiver.requests) == 2
    assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.attempts.order_by("attempt_number")[0].retry_after_seconds == 120


def test_retry_after_as_an_http_date_is_read():
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    assert services.retry_after_parse("Sun, 29 Nov 2026 12:10:00 GMT", now=now) == dt.timedelta(
        minutes=10
    )
    assert services.retry_after_parse("soon", now=now) is None


def test_410_disables_the_endpoint_cancels_what_is_pending_and_tells_the_team(
    receiver, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.NOTIFY_TEAM_EMAIL = "cs@example.com"
    heard = []

    def listener(sender, endpoint, reason, **kwargs):
        heard.append((endpoint.pk, reason))

    webhook_endpoint_disabled.connect(listener)
    try:
        endpoint = _endpoint(receiver)
        first = _enqueue("k-1")
        second = _enqueue("k-2")
        receiver.answer(Answer(410, body=b"gone"))
        with django_capture_on_commit_callbacks(execute=True):
            assert webhook_deliveries_dispatch(limit=1) == 1
    finally:
        webhook_endpoint_disabled.disconnect(listener)

    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    assert endpoint.disabled_reason == WebhookEndpoint.DisabledReason.GONE
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == WebhookDelivery.Status.FAILED
    assert second.status == WebhookDelivery.Status.CANCELLED
    assert webhook_deliveries_dispatch() == 0
    assert len(receiver.requests) == 1
    assert heard == [(endpoint.pk, "gone")]
    (mail,) = mailoutbox
    assert mail.to == ["cs@example.com"]
    assert "410" in mail.body
    assert endpoint.history.first().history_change_reason.startswith("disabled")


def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new_one(receiver):
    endpoint = _endpoint(receiver)
    new_secret = webhook_endpoint_rotate_secret(endpoint=endpoint, overlap_hours=24)
    assert new_secret.startswith("whsec_")
    assert new_secret != receiver.secrets[0]
    receiver.secrets.append(new_secret)

    _enqueue("during")
    webhook_deliveries_dispatch()
    during = receiver.requests[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    # The old secret and the new one each verify on their own.
    assert during.verified == [True, True]

    later = timezone.now() + dt.timedelta(hours=25)
    _enqueue("after")
    webhook_deliveries_dispatch(now=later)
    after = receiver.requests[-1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert after.verified == [False, True]


class WorkerKilled(BaseException):
    """Stands for the process dying: not an Exception, nothing catches it."""


def test_a_worker_killed_mid_delivery_still_delivers_with_the_same_webhook_id(
    receiver, monkeypatch
):
    _endpoint(receiver)
    delivery = _enqueue()
    real_record = services._delivery_record
    calls = []

    def die_after_sending_once(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise WorkerKilled
        return real_record(**kwargs)

    monkeypatch.setattr(services, "_delivery_record", die_after_sending_once)
    t0 = timezone.now()
    with pytest.raises(WorkerKilled):
        webhook_deliveries_dispatch(now=t0)
    # Sent, but nothing recorded: the row is still claimed by the dead worker.
    assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.claimed_until == t0 + services.CLAIM_LEASE

    # Another worker before the lease has passed: leaves it alone.
    assert webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=30)) == 0
    # After the lease: claimed again and delivered.
    assert webhook_deliveries_dispatch(now=t0 + services.CLAIM_LEASE) == 1

    first, second = receiver.requests
    assert first.webhook_id == second.webhook_id == delivery.message_id
    assert second.verified == [True]
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.attempt_count == 2


def test_a_second_claim_of_the_same_attempt_loses():
    from tests.notifications.factories import WebhookEndpointFactory

    endpoint = WebhookEndpointFactory(owner_key=OWNER)
    (delivery,) = webhook_enqueue(
        owner_key=OWNER, event_type="usage.spike", payload={}, idempotency_key="k"
    )
    now = timezone.now()
    assert services._delivery_claim(pk=delivery.pk, now=now) is not None
    assert services._delivery_claim(pk=delivery.pk, now=now) is None
    assert endpoint.deliveries.get().attempt_count == 1


def test_the_schedule_runs_immediately_then_5s_5min_30min_2h_5h_10h_14h_20h_24h_then_gives_up(
    receiver,
):
    _endpoint(receiver)
    delivery = _enqueue()
    receiver.answer(*[Answer(500) for _ in RETRY_SCHEDULE])
    now = timezone.now()
    waits = []
    for _ in RETRY_SCHEDULE:
        assert webhook_deliveries_dispatch(now=now) == 1
        delivery.refresh_from_db()
        if delivery.next_attempt_at is None:
            break
        waits.append(delivery.next_attempt_at - now)
        now = delivery.next_attempt_at
    assert waits == list(RETRY_SCHEDULE[1:])
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert len(receiver.requests) == len(RETRY_SCHEDULE) == 10
    assert len({r.webhook_id for r in receiver.requests}) == 1


def test_an_endpoint_failing_for_5_days_is_disabled_and_the_team_told(
    receiver, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.NOTIFY_TEAM_EMAIL = "cs@example.com"
    endpoint = _endpoint(receiver)
    receiver.answer(*[Answer(500) for _ in range(5)])
    _enqueue("k-1")
    t0 = timezone.now()
    webhook_deliveries_dispatch(now=t0)
    endpoint.refresh_from_db()
    assert endpoint.failing_since == t0

    # Four days later, still failing: still enabled.
    _enqueue("k-2")
    webhook_deliveries_dispatch(now=t0 + dt.timedelta(days=4))
    endpoint.refresh_from_db()
    assert endpoint.enabled

    _enqueue("k-3")
    with django_capture_on_commit_callbacks(execute=True):
        webhook_deliveries_dispatch(now=t0 + dt.timedelta(days=5))
    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    assert endpoint.disabled_reason == WebhookEndpoint.DisabledReason.FAILING
    assert not WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).exists()
    (mail,) = mailoutbox
    assert "failing since" in mail.body


def test_a_success_clears_the_failure_clock(receiver):
    endpoint = _endpoint(receiver)
    receiver.answer(Answer(500))
    _enqueue()
    t0 = timezone.now()
    webhook_deliveries_dispatch(now=t0)
    endpoint.refresh_from_db()
    assert endpoint.failing_since == t0
    webhook_deliveries_dispatch(now=t0 + dt.timedelta(seconds=5))
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None


def test_a_redirect_is_not_followed(receiver):
    _endpoint(receiver)
    delivery = _enqueue()
    receiver.answer(Answer(302, headers={"Location": receiver.url + "/elsewhere"}))
    webhook_deliveries_dispatch()
    assert [r.path for r in receiver.requests] == ["/hook"]
    attempt = delivery.attempts.get()
    assert (attempt.status_code, attempt.outcome) == (302, "http_error")


def test_an_unreachable_receiver_is_a_network_error_retried_on_schedule(receiver):
    endpoint = _endpoint(receiver)
    receiver.__exit__()  # nothing listens on the port any more
    delivery = _enqueue()
    t0 = timezone.now()
    webhook_deliveries_dispatch(now=t0)
    attempt = delivery.attempts.get()
    assert attempt.outcome == WebhookAttempt.Outcome.NETWORK_ERROR
    assert attempt.status_code is None
    assert attempt.response_excerpt
    delivery.refresh_from_db()
    assert delivery.next_attempt_at == t0 + dt.timedelta(seconds=5)
    endpoint.refresh_from_db()
    assert endpoint.failing_since == t0
