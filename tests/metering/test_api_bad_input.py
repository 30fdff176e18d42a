"""Bad input to the account and meter endpoints is refused, not coerced."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.models import Account, Meter, QuarantinedEvent
from tests.metering.factories import api_key_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def manage_auth():
    _, raw = api_key_for(["manage"])
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.mark.parametrize("value", [0, 1.5, True, ["a"], {"a": 1}])
def test_a_non_string_account_field_is_400_invalid_type_and_nothing_is_stored(
    api_client, manage_auth, value
):
    response = api_client.put(
        "/api/v1/accounts/acme", {"name": "Acme", "tier": value}, format="json", **manage_auth
    )

    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "tier", "code": "invalid_type", "message": "Must be a string."}
    ]
    assert not Account.objects.exists()


def test_a_non_string_meter_dimension_is_400_invalid_type(api_client, manage_auth):
    response = api_client.put(
        "/api/v1/meters/api_calls",
        {"name": "API calls", "aggregation": "count", "dimensions": ["region", 7], "unit": 3},
        format="json",
        **manage_auth,
    )

    assert response.status_code == 400
    assert {(e["field"], e["code"]) for e in response.json()["errors"]} == {
        ("dimensions.1", "invalid_type"),
        ("unit", "invalid_type"),
    }
    assert not Meter.objects.exists()


@pytest.mark.parametrize("timestamp", ["3.473755801121693e-117", "1e-300", "-4e-250"])
def test_a_quarantined_event_with_a_tiny_exponent_timestamp_is_kept_not_a_500(
    api_client, timestamp
):
    # Found by the schema fuzzer: the timestamp is read as Unix second 0 (an old, late event),
    # and the quarantine keeps the item as received, whose number the serialiser refused.
    _, raw = api_key_for(["ingest"])
    body = (
        '{"events": [{"transaction_id": "t1", "external_customer_id": "nobody-yet", '
        f'"code": "api_calls", "timestamp": {timestamp}}}]}}'
    )

    response = api_client.generic(
        "POST",
        "/api/v1/events/batch",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )

    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == "quarantined"
    stored = QuarantinedEvent.objects.get()
    assert Decimal(str(stored.payload["timestamp"])) == Decimal(timestamp)


@pytest.mark.parametrize("number", ["1e-20000", "1.5e-16383", "1e131072", "-2e200000"])
def test_a_number_postgresql_cannot_store_is_a_400_malformed_json_not_a_500(api_client, number):
    # Like NaN: no column could hold it, so the body is refused before anything is parsed into
    # an event (a quarantined item keeps its raw timestamp, which no column could store).
    _, raw = api_key_for(["ingest"])
    body = (
        '{"events": [{"transaction_id": "t1", "external_customer_id": "nobody-yet", '
        f'"code": "api_calls", "timestamp": {number}}}]}}'
    )

    response = api_client.generic(
        "POST",
        "/api/v1/events/batch",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )

    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"
    assert not QuarantinedEvent.objects.exists()
