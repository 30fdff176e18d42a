"""Two workers dispatching at the same moment never send the same attempt twice."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from notifications import services
from notifications.services import (
    webhook_deliveries_dispatch,
    webhook_endpoint_upsert,
    webhook_enqueue,
)
from tests.notifications.receiver import Answer


@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_send_each_delivery_once(receiver, monkeypatch):
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
    for n in range(6):
        webhook_enqueue(
            owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key=f"k{n}"
        )
    # Slow answers keep both workers busy over the same rows.
    receiver.answer(*[Answer(200, delay=0.2) for _ in range(12)])
    barrier = threading.Barrier(2)
    attempted: list[int] = []
    errors: list[BaseException] = []

    def worker():
        try:
            barrier.wait()
            attempted.append(webhook_deliveries_dispatch())
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert sum(attempted) == 6
    ids = [r.webhook_id for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 6
