"""API keys on the API: missing, malformed, unknown, revoked, wrong scope."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import ApiKey
from metering.services.api_keys import api_key_revoke
from tests.metering.factories import AccountFactory, api_key_for

pytestmark = pytest.mark.django_db

BATCH = "/api/v1/events/batch"
BODY = '{"events": []}'


def _post(api_client, **headers):
    return api_client.generic("POST", BATCH, BODY, content_type="application/json", **headers)


def test_missing_key_is_401_not_authenticated(api_client):
    response = _post(api_client)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Bearer"


def test_unknown_key_is_401_invalid_api_key(api_client):
    response = _post(api_client, HTTP_AUTHORIZATION="Bearer mo_not-a-real-key")

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


def test_revoked_key_is_401_revoked_api_key(api_client):
    key, raw = api_key_for(["ingest"])
    api_key_revoke(key=key)

    response = _post(api_client, HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert response.status_code == 401
    assert response.json()["code"] == "revoked_api_key"


@pytest.mark.parametrize("header", ["Token abc", "Bearer", "Bearer a b", "bearer-abc"])
def test_malformed_authorization_header_is_401(api_client, header):
    response = _post(api_client, HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_authorization"


@pytest.mark.parametrize(
    ("method", "path", "scopes"),
    [
        ("POST", "/api/v1/events", ["read", "manage"]),
        ("POST", BATCH, ["read"]),
        ("PUT", "/api/v1/accounts/acme", ["ingest", "read"]),
        ("GET", "/api/v1/accounts/acme", ["ingest", "manage"]),
        ("PUT", "/api/v1/meters/calls", ["read"]),
        ("GET", "/api/v1/meters", ["ingest"]),
    ],
)
def test_key_without_the_scope_is_403_insufficient_scope(api_client, method, path, scopes):
    AccountFactory(external_id="acme")
    _key, raw = api_key_for(scopes)

    response = api_client.generic(
        method, path, "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
    )

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


def test_a_good_key_is_accepted_and_its_last_use_recorded(api_client):
    key, raw = api_key_for(["ingest"])

    response = _post(api_client, HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert response.status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert timezone.now() - key.last_used_at < timedelta(minutes=1)


def test_last_use_is_written_at_most_once_a_minute(api_client):
    key, raw = api_key_for(["ingest"])
    _post(api_client, HTTP_AUTHORIZATION=f"Bearer {raw}")
    first_use = ApiKey.objects.get(pk=key.pk).last_used_at

    _post(api_client, HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert ApiKey.objects.get(pk=key.pk).last_used_at == first_use
