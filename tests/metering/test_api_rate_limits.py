"""Per-API-key rate limits: 429 rate_limited with Retry-After; ingest and read counted apart."""

from __future__ import annotations

import logging

import pytest

from metering.api import throttling
from metering.models import UsageEvent
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def _auth(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def _event(tx: str) -> dict:
    return {
        "event": {
            "transaction_id": tx,
            "external_customer_id": "acme",
            "code": "api_calls",
            "timestamp": "2026-11-21T10:00:00Z",
        }
    }


@pytest.fixture
def acme():
    account = AccountFactory(external_id="acme")
    MeterFactory(code="api_calls")
    return account


def test_a_key_over_its_read_rate_gets_429_rate_limited_with_retry_after(api_client, settings):
    settings.API_RATE_READ = "2/min"
    _, raw = api_key_for(["read"])

    statuses = [api_client.get("/api/v1/meters", **_auth(raw)).status_code for _ in range(2)]
    refused = api_client.get("/api/v1/meters", **_auth(raw))

    assert statuses == [200, 200]
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert body["errors"] == []
    assert "retry in" in body["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60


def test_limits_are_per_key_not_shared_between_keys(api_client, settings):
    settings.API_RATE_READ = "1/min"
    _, first = api_key_for(["read"], name="first")
    _, second = api_key_for(["read"], name="second")

    assert api_client.get("/api/v1/meters", **_auth(first)).status_code == 200
    assert api_client.get("/api/v1/meters", **_auth(first)).status_code == 429
    assert api_client.get("/api/v1/meters", **_auth(second)).status_code == 200


def test_ingest_and_read_are_counted_against_their_own_rates(api_client, settings, acme):
    settings.API_RATE_INGEST = "2/min"
    settings.API_RATE_READ = "1/min"
    _, raw = api_key_for(["ingest", "read", "manage"])

    read = api_client.get("/api/v1/meters", **_auth(raw))
    ingested = [
        api_client.post("/api/v1/events", _event(f"tx-{i}"), format="json", **_auth(raw))
        for i in range(2)
    ]
    manage = api_client.put(
        "/api/v1/meters/api_calls",
        {"name": "x", "aggregation": "count"},
        format="json",
        **_auth(raw),
    )

    assert read.status_code == 200
    assert [r.status_code for r in ingested] == [200, 200]
    # manage calls share the read rate, already spent
    assert manage.status_code == 429


def test_a_rate_limited_ingest_writes_nothing(api_client, settings, acme):
    settings.API_RATE_INGEST = "1/min"
    _, raw = api_key_for(["ingest"])
    api_client.post("/api/v1/events", _event("tx-1"), format="json", **_auth(raw))

    refused = api_client.post("/api/v1/events", _event("tx-2"), format="json", **_auth(raw))

    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert list(UsageEvent.objects.values_list("transaction_id", flat=True)) == ["tx-1"]


def test_a_rate_set_to_off_never_limits(api_client, settings):
    settings.API_RATE_READ = "off"
    _, raw = api_key_for(["read"])

    statuses = {api_client.get("/api/v1/meters", **_auth(raw)).status_code for _ in range(5)}

    assert statuses == {200}


def test_unreachable_cache_fails_open_and_logs_a_warning(api_client, settings, monkeypatch, caplog):
    monkeypatch.setattr(throttling, "_cache_down_until", 0.0)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": UNREACHABLE_REDIS}}
    settings.API_RATE_READ = "1/min"
    _, raw = api_key_for(["read"])

    with caplog.at_level(logging.WARNING, logger="metering.api.throttling"):
        statuses = [api_client.get("/api/v1/meters", **_auth(raw)).status_code for _ in range(3)]

    assert statuses == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "metering.api.throttling"]
    # one warning, then the cache is left alone for a while instead of timing out per request
    assert len(warnings) == 1
    assert "Rate limiting is off" in warnings[0].getMessage()


def test_the_schema_documents_429_with_retry_after_on_every_keyed_operation(client):
    schema = client.get("/api/schema/?format=json").json()

    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if operation.get("security"):
                assert "429" in operation["responses"], (method, path)
                assert "Retry-After" in operation["responses"]["429"]["headers"]


def test_a_window_counter_is_one_redis_integer_that_expires_after_its_window(api_client, settings):
    """The counter is INCR'd and given its expiry in one round trip; it counts every request of
    the window and is gone a few seconds after the window, as with Django's ADD then INCR."""
    from django.core.cache import caches

    settings.API_RATE_READ = "5/min"
    key, raw = api_key_for(["read"])
    for _ in range(3):
        assert api_client.get("/api/v1/meters", **_auth(raw)).status_code == 200

    backend = caches["default"]
    client = backend._cache.get_client()
    pattern = backend.make_key(f"ratelimit:read:{key.pk}:60:*")
    names = [k.decode() for k in client.keys(pattern)]  # two if a minute turned meanwhile
    assert sum(int(client.get(name)) for name in names) == 3
    assert all(0 < client.ttl(name) <= 65 for name in names)
    window = int(names[-1].rsplit(":", 1)[1])
    assert backend.get(f"ratelimit:read:{key.pk}:60:{window}") == int(client.get(names[-1]))
