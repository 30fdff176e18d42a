"""/api/v1/accounts/{external_id}/webhook-endpoints: the customer's signed webhooks by API."""

from __future__ import annotations

import json

import pytest
from standardwebhooks import Webhook

from alerts.notify import owner_key
from notifications.models import WebhookDelivery, WebhookEndpoint
from notifications.services import webhook_deliveries_dispatch, webhook_enqueue
from tests.metering.factories import AccountFactory, api_key_for
from tests.notifications.receiver import WebhookReceiver

pytestmark = pytest.mark.django_db

BASE = "/api/v1/accounts/acme/webhook-endpoints"


def _client(api_client, scopes):
    _, raw = api_key_for(scopes)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


@pytest.fixture
def acme():
    return AccountFactory(external_id="acme")


@pytest.fixture
def manager(api_client, acme):
    return _client(api_client, "manage")


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


def _put(client, name="main", **body):
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["usage.spike"], **body}
    return client.put(f"{BASE}/{name}", data=json.dumps(body), content_type="application/json")


def test_put_creates_the_endpoint_and_shows_its_secret_once(manager, acme):
    created = _put(manager, event_types=["usage.spike", "account.billing_hold"])

    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["name"] == "main"
    assert body["event_types"] == ["usage.spike", "account.billing_hold"]
    assert body["enabled"] is True
    endpoint = WebhookEndpoint.objects.get(owner_key=owner_key(acme.pk), name="main")
    assert endpoint.secret == body["secret"]

    read = manager.get(f"{BASE}/main")
    updated = _put(manager, url="http://127.0.0.1:9/other", enabled=False)
    listed = manager.get(BASE)

    assert read.status_code == 200 and "secret" not in read.json()
    assert updated.status_code == 200 and "secret" not in updated.json()
    assert updated.json()["url"] == "http://127.0.0.1:9/other"
    assert updated.json()["enabled"] is False
    assert [r["name"] for r in listed.json()["results"]] == ["main"]
    assert body["secret"] not in json.dumps([read.json(), updated.json(), listed.json()])
    # The update kept the secret: only a rotation changes it.
    endpoint.refresh_from_db()
    assert endpoint.secret == body["secret"]
    assert endpoint.history.first().history_change_reason.startswith("API key ")


def test_every_webhook_endpoint_call_needs_the_manage_scope(api_client, acme):
    reader = _client(api_client, ["read", "ingest"])
    calls = [
        reader.get(BASE),
        reader.get(f"{BASE}/main"),
        _put(reader),
        reader.delete(f"{BASE}/main"),
        reader.post(f"{BASE}/main/rotate-secret"),
    ]

    assert [c.status_code for c in calls] == [403] * 5
    assert {c.json()["code"] for c in calls} == {"insufficient_scope"}
    assert not WebhookEndpoint.objects.exists()


def test_rotation_returns_a_new_secret_and_deliveries_are_signed_with_both(manager, acme, receiver):
    first = _put(manager, url=receiver.url).json()["secret"]

    rotated = manager.post(
        f"{BASE}/main/rotate-secret",
        data=json.dumps({"overlap_hours": 24}),
        content_type="application/json",
    )

    assert rotated.status_code == 200
    second = rotated.json()["secret"]
    assert second.startswith("whsec_") and second != first
    assert rotated.json()["previous_secret_expires_at"] is not None
    assert "secret" not in manager.get(f"{BASE}/main").json()
    receiver.secrets[:] = [first, second]
    webhook_enqueue(
        owner_key=owner_key(acme.pk),
        event_type="usage.spike",
        payload={"meter": "api_calls"},
        idempotency_key="rotation",
    )
    webhook_deliveries_dispatch()

    (request,) = receiver.requests
    assert request.verified == [True, True]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(second).verify(request.body, request.headers)
    assert WebhookDelivery.objects.get().status == WebhookDelivery.Status.DELIVERED


def test_rotation_with_an_empty_body_keeps_the_old_secret_for_24_hours(manager, acme):
    _put(manager)

    rotated = manager.post(f"{BASE}/main/rotate-secret")

    assert rotated.status_code == 200
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.previous_secret and endpoint.secret == rotated.json()["secret"]
    hours = (endpoint.previous_secret_expires_at - endpoint.updated_at).total_seconds() / 3600
    assert 23.9 < hours <= 24


def test_another_accounts_endpoints_are_not_found(manager, acme):
    AccountFactory(external_id="globex")
    _put(manager)
    other = "/api/v1/accounts/globex/webhook-endpoints"

    assert manager.get(f"{other}/main").status_code == 404
    assert manager.delete(f"{other}/main").status_code == 404
    assert manager.post(f"{other}/main/rotate-secret").status_code == 404
    assert manager.get(other).json() == {"results": [], "next": None}
    missing = manager.get("/api/v1/accounts/nobody/webhook-endpoints/main")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert manager.get("/api/v1/accounts/nobody/webhook-endpoints").status_code == 404
    assert WebhookEndpoint.objects.count() == 1


def test_delete_removes_the_endpoint(manager, acme):
    _put(manager)

    deleted = manager.delete(f"{BASE}/main")

    assert deleted.status_code == 204
    assert manager.get(f"{BASE}/main").status_code == 404
    assert manager.delete(f"{BASE}/main").status_code == 404


def test_unknown_event_types_and_wrong_types_are_refused_field_by_field(manager, acme):
    unknown = _put(manager, event_types=["usage.spike", "usage.explosion"])
    empty = _put(manager, event_types=[])
    not_bool = _put(manager, enabled="yes")
    not_str = _put(manager, url=12)

    assert unknown.status_code == 400
    assert unknown.json()["code"] == "invalid"
    (error,) = unknown.json()["errors"]
    assert error["field"] == "event_types.1"
    assert error["code"] == "invalid_choice"
    assert "usage.explosion" in error["message"] and "quota.threshold" in error["message"]
    assert empty.json()["errors"][0]["field"] == "event_types"
    assert not_bool.json()["errors"] == [
        {"field": "enabled", "code": "invalid_type", "message": "Must be true or false."}
    ]
    assert not_str.json()["errors"][0]["code"] == "invalid_type"
    bad_name = _put(manager, name="-leading-dash")
    assert bad_name.status_code == 400
    assert bad_name.json()["errors"][0]["field"] == "name"
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/in",  # not https
        "https://127.0.0.1/hook",  # loopback
        "https://10.1.2.3/hook",  # private
        "https://169.254.169.254/latest",  # link-local (cloud metadata)
        "https://[::1]/hook",
    ],
)
def test_in_production_urls_must_be_https_to_public_addresses(manager, acme, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False

    refused = _put(manager, url=url)

    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid"
    assert refused.json()["errors"][0]["field"] == "url"
    assert refused.json()["errors"][0]["code"] == "invalid_url"
    assert not WebhookEndpoint.objects.exists()


def test_in_development_loopback_http_is_allowed(manager, acme, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True

    assert _put(manager, url="http://127.0.0.1:8123/hook").status_code == 201


def test_in_production_a_public_https_address_is_accepted(manager, acme, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False

    assert _put(manager, url="https://93.184.215.14/hook").status_code == 201


def test_the_list_pages_by_name_with_next(manager, acme, django_assert_max_num_queries):
    for name in ["e", "a", "d", "b", "c"]:
        assert _put(manager, name=name).status_code == 201

    with django_assert_max_num_queries(6):
        page = manager.get(f"{BASE}?limit=2").json()
    names = [r["name"] for r in page["results"]]
    while page["next"]:
        page = manager.get(page["next"]).json()
        names += [r["name"] for r in page["results"]]

    assert names == ["a", "b", "c", "d", "e"]
    assert manager.get(f"{BASE}?limit=0").json()["code"] == "invalid_parameter"


def test_the_webhook_endpoint_operations_are_in_the_openapi_schema(manager):
    schema = manager.get("/api/schema/?format=json").json()
    paths = schema["paths"]

    detail = paths["/api/v1/accounts/{external_id}/webhook-endpoints/{name}"]
    assert set(detail) >= {"get", "put", "delete"}
    assert "201" in detail["put"]["responses"] and "200" in detail["put"]["responses"]
    assert "get" in paths["/api/v1/accounts/{external_id}/webhook-endpoints"]
    assert "post" in paths["/api/v1/accounts/{external_id}/webhook-endpoints/{name}/rotate-secret"]
    created = schema["components"]["schemas"]["WebhookEndpointWithSecret"]
    assert "secret" in created["required"]
    assert "secret" not in schema["components"]["schemas"]["WebhookEndpointOutput"]["properties"]
    components = schema["components"]["schemas"]
    items = components["WebhookEndpointInputRequest"]["properties"]["event_types"]["items"]
    enum = components[items["$ref"].rsplit("/", 1)[1]]["enum"]
    assert enum == [
        "usage.spike",
        "usage.drop",
        "invoice.projected_threshold",
        "quota.threshold",
        "account.billing_hold",
    ]
