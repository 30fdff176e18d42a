"""Concurrent deliveries of one event store it once (real transactions, one connection per thread)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from metering.models import UsageEvent
from metering.services.ingest import events_ingest
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8


@pytest.fixture
def world():
    AccountFactory(external_id="acme")
    MeterFactory(code="tokens", aggregation="sum", value_property="tokens")
    _key, raw = api_key_for(["ingest"])
    return raw


def _event(tid: str, tokens: int = 1) -> dict:
    return {
        "transaction_id": tid,
        "external_customer_id": "acme",
        "code": "tokens",
        "timestamp": 1_700_000_000,
        "properties": {"tokens": tokens},
    }


def _in_threads(count: int, work) -> list:
    """Run work(i) in `count` threads released together; each thread closes its connection."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = work(i)
        except Exception as exc:  # reported below, with the thread's traceback
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def _post(raw_key: str, path: str, body) -> tuple[int, dict]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    response = client.generic("POST", path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_n_threads_posting_the_same_transaction_id_store_exactly_one_event(world):
    results = _in_threads(
        THREADS, lambda i: _post(world, "/api/v1/events", {"event": _event("same")})
    )

    assert {code for code, _ in results} == {200}
    statuses = Counter(body["status"] for _, body in results)
    assert statuses == {"accepted": 1, "duplicate": THREADS - 1}
    assert UsageEvent.objects.filter(transaction_id="same").count() == 1
    assert len({body["event_id"] for _, body in results}) == 1


def test_n_threads_posting_overlapping_batches_in_opposite_orders_neither_deadlock_nor_double_count(
    world,
):
    keys = [f"k{i}" for i in range(300)]

    def work(i: int):
        ordered = keys if i % 2 == 0 else list(reversed(keys))
        return _post(world, "/api/v1/events/batch", {"events": [_event(k) for k in ordered]})

    results = _in_threads(THREADS, work)

    assert {code for code, _ in results} == {200}
    assert sum(body["accepted"] for _, body in results) == len(keys)
    assert sum(body["duplicates"] for _, body in results) == len(keys) * (THREADS - 1)
    assert UsageEvent.objects.count() == len(keys)


def _wait_until_blocked(count: int) -> None:
    """Until `count` other sessions wait on a lock (ours, on the uncommitted row)."""
    deadline = time.monotonic() + 20
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            # Activity statistics are frozen for a transaction unless cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
            time.sleep(0.02)
    pytest.fail(f"{count} sessions never waited on the uncommitted event")


@pytest.mark.parametrize("first_commits", [True, False], ids=["commit", "rollback"])
def test_requests_waiting_on_an_uncommitted_insert_of_their_key_resolve_once(world, first_commits):
    """The first writer holds the key uncommitted; the others must wait, then see its outcome."""
    results: list = []

    class Rollback(Exception):
        pass

    workers: list[threading.Thread] = []

    def worker():
        try:
            results.append(events_ingest(items=[_event("held", 5)], fmt="lago").results[0].status)
        finally:
            connection.close()

    try:
        with transaction.atomic():
            first = events_ingest(items=[_event("held", 5)], fmt="lago")
            assert first.accepted == 1
            workers = [threading.Thread(target=worker) for _ in range(THREADS)]
            for thread in workers:
                thread.start()
            _wait_until_blocked(THREADS)
            if not first_commits:
                raise Rollback
    except Rollback:
        pass
    for thread in workers:
        thread.join(timeout=60)

    if first_commits:
        assert Counter(results) == {"duplicate": THREADS}
    else:
        assert Counter(results) == {"accepted": 1, "duplicate": THREADS - 1}
    assert UsageEvent.objects.filter(transaction_id="held").count() == 1


def test_concurrent_same_id_with_different_content_stores_one_and_reports_conflicts(world):
    results = _in_threads(
        THREADS, lambda i: events_ingest(items=[_event("clash", i)], fmt="lago").results[0]
    )

    statuses = Counter(r.status for r in results)
    assert statuses == {"accepted": 1, "conflict": THREADS - 1}
    stored = UsageEvent.objects.get(transaction_id="clash")
    winner = next(i for i, r in enumerate(results) if r.status == "accepted")
    assert stored.value == winner
