"""The adjustments API: list (read), request (adjust), the policy, idempotency keys."""

from __future__ import annotations

import pytest

from adjustments.models import Adjustment
from metering.services.api_keys import api_key_create
from tests.adjustments.support import scenario

pytestmark = pytest.mark.django_db


def _client(api_client, *scopes):
    _, raw = api_key_create(name="backend", scopes=list(scopes))
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


def _url(account) -> str:
    return f"/api/v1/accounts/{account.external_id}/adjustments"


def _credit(**extra):
    return {
        "kind": "credit",
        "amount_minor": 2500,
        "currency": "USD",
        "reason_code": "outage_sla",
        "note": "Outage on the 3rd",
        "ticket": "ZD-1",
        **extra,
    }


def test_a_credit_within_the_limit_is_applied_and_a_repeated_key_answers_the_first(api_client):
    s = scenario(per_day=300)
    client = _client(api_client, "adjust", "read")
    first = client.post(_url(s.account), _credit(idempotency_key="abc"), format="json")
    assert first.status_code == 201, first.json()
    body = first.json()
    assert (body["status"], body["kind"], body["amount_minor"]) == ("applied", "credit", 2500)
    assert body["within_policy"] is True
    assert body["provider_route"] == "simulated_credit"
    assert body["requested_by"].startswith("API key backend")
    assert (body["total_before_minor"], body["total_after_minor"]) == (300_00, 275_00)

    again = client.post(_url(s.account), _credit(idempotency_key="abc"), format="json")
    assert again.status_code == 200
    assert again.json() == body
    assert Adjustment.objects.count() == 1


def test_above_the_limit_the_request_waits_for_a_manager(api_client):
    s = scenario(per_day=300)
    client = _client(api_client, "adjust")
    answer = client.post(_url(s.account), _credit(amount_minor=10001), format="json")
    assert answer.status_code == 201
    assert answer.json()["status"] == "requested"
    assert answer.json()["expires_at"]


def test_a_usage_correction_over_the_api(api_client):
    s = scenario(per_day=100)
    client = _client(api_client, "adjust")
    answer = client.post(
        _url(s.account),
        {
            "kind": "usage_correction",
            "meter": s.meter.code,
            "day": s.period.start_date.isoformat(),
            "corrected_quantity": "80.5",
            "reason_code": "metering_error",
            "note": "Agent double-reported",
        },
        format="json",
    )
    assert answer.status_code == 201, answer.json()
    body = answer.json()
    assert (body["original_quantity"], body["corrected_quantity"]) == ("100", "80.5")
    assert body["price_difference_minor"] == 19_50
    assert body["status"] == "applied" and body["provider_route"] == "usage_push"


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"currency": "EUR"}, "currency_mismatch"),
        ({"reason_code": "because"}, "invalid"),
        ({"note": ""}, "invalid"),
        ({"amount_minor": 0}, "invalid"),
        ({"amount_minor": None}, "invalid_adjustment"),
        ({"period_start": "1999-01-01"}, "unknown_period"),
    ],
)
def test_bad_requests_are_400s_with_a_code(api_client, extra, code):
    s = scenario(per_day=300)
    answer = _client(api_client, "adjust").post(_url(s.account), _credit(**extra), format="json")
    assert answer.status_code == 400
    assert answer.json()["code"] == code
    assert not Adjustment.objects.exists()


def test_scopes_read_lists_adjust_requests_and_neither_crosses(api_client):
    s = scenario(per_day=300)
    reader = _client(api_client, "read")
    assert reader.post(_url(s.account), _credit(), format="json").status_code == 403
    writer = _client(api_client, "adjust")
    assert writer.get(_url(s.account)).status_code == 403
    assert (
        writer.post("/api/v1/accounts/nobody/adjustments", _credit(), format="json").json()["code"]
        == "not_found"
    )


def test_the_list_is_newest_first_and_paged_with_next(api_client, django_assert_max_num_queries):
    s = scenario(per_day=300)
    writer = _client(api_client, "adjust")
    for n in range(3):
        writer.post(_url(s.account), _credit(amount_minor=100 + n), format="json")
    reader = _client(api_client, "read")
    with django_assert_max_num_queries(4):
        page = reader.get(_url(s.account), {"limit": 2}).json()
    assert [a["amount_minor"] for a in page["results"]] == [102, 101]
    rest = reader.get(page["next"]).json()
    assert [a["amount_minor"] for a in rest["results"]] == [100]
    assert rest["next"] is None


@pytest.mark.parametrize("limit", ["0", "201", "ten"])
def test_a_limit_out_of_range_is_refused_like_the_other_lists(api_client, limit):
    s = scenario(per_day=300)
    answer = _client(api_client, "read").get(_url(s.account), {"limit": limit})
    assert answer.status_code == 400
    body = answer.json()
    assert body["code"] == "invalid_parameter"
    assert body["errors"][0]["field"] == "limit"
