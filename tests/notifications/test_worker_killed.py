"""A worker process killed (SIGKILL) while its request is in flight: the delivery is claimed by
a dead worker, and once the claim's lease has passed another worker sends it again with the
same webhook-id (at least once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from notifications import services
from notifications.models import WebhookDelivery
from notifications.services import (
    webhook_deliveries_dispatch,
    webhook_endpoint_upsert,
    webhook_enqueue,
)
from tests.notifications.receiver import Answer

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import django
django.setup()
from notifications.services import webhook_deliveries_dispatch
webhook_deliveries_dispatch()
"""


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_killed_mid_request_still_delivers_with_the_same_webhook_id(
    receiver, monkeypatch
):
    # Committed enqueues would queue the Celery task on the real broker: not in tests.
    monkeypatch.setattr(services, "_dispatch_soon", lambda: None)
    _endpoint, secret, _ = webhook_endpoint_upsert(
        owner_key="account:1",
        name="main",
        url=receiver.url,
        event_types=["usage.spike"],
        enabled=True,
    )
    receiver.secrets.append(secret)
    (delivery,) = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    # The first request hangs long enough for the worker to be killed while it waits.
    receiver.answer(Answer(200, delay=8))
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.requests, "the worker never sent"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert delivery.claimed_until is not None
    assert delivery.attempts.count() == 0
    # While the dead worker's lease lasts, nobody else sends it.
    assert webhook_deliveries_dispatch() == 0
    assert webhook_deliveries_dispatch(now=timezone.now() + services.CLAIM_LEASE) == 1

    first, second = receiver.requests
    assert first.webhook_id == second.webhook_id == delivery.message_id
    assert first.verified == second.verified == [True]
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
