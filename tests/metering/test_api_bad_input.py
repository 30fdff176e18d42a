"""Bad input to the account and meter endpoints is refused, not coerced."""

from __future__ import annotations

import pytest

from metering.models import Account, Meter
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
