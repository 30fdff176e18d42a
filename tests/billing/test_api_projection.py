"""GET /api/v1/accounts/{external_id}/projected-invoice."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from billing.money import format_money
from billing.periods import local_date
from tests.billing.factories import AccountFactory
from tests.billing.projection_scenarios import api_calls_per_day, api_calls_scenario, sum_usage
from tests.metering.factories import api_key_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/accounts/{}/projected-invoice"


def _client(api_client, scopes="read"):
    _key, raw = api_key_for(scopes)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


@pytest.fixture
def scenario():
    """Subscribed 40 days ago (so a previous period exists), usage every day up to today."""
    now = timezone.now()
    today = local_date(now, "UTC")
    s = api_calls_scenario(now=now, started=today - dt.timedelta(days=40))
    sum_usage(s.account, s.meter, today - dt.timedelta(days=40), today, api_calls_per_day)
    return s


def test_projected_invoice_answers_lines_totals_previous_period_and_explanations(
    api_client, scenario, django_assert_max_num_queries
):
    client = _client(api_client)

    # The key and the account (2-3), the period and the plan's prices (2), usage so far and the
    # run-rate history (3 + 3), the top endpoint (4), the previous period priced (6), the
    # period's credits (1, from the credit sources registered by higher apps: adjustments).
    with django_assert_max_num_queries(21):
        response = client.get(URL.format(scenario.account.external_id))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "account",
        "plan",
        "currency",
        "as_of",
        "generated_at",
        "period",
        "to_date_total_minor",
        "to_date_total_formatted",
        "projected_total_minor",
        "projected_total_formatted",
        "previous_period",
        "change",
        "summary",
        "lines",
    }
    assert body["account"] == scenario.account.external_id
    assert body["plan"] == {"code": "scale", "name": "Scale"}
    assert body["as_of"] == local_date(timezone.now(), "UTC").isoformat()
    assert body["period"]["state"] == "open"
    assert [line["kind"] for line in body["lines"]] == ["plan_fee", "usage", "minimum_commitment"]
    calls = body["lines"][1]
    assert calls["meter"] == "api_calls"
    assert calls["unit"] == "API calls"
    assert calls["included_units"] == "1000000"
    assert calls["forecast_method"] == "weekday_mean"
    assert isinstance(calls["units_to_date"], str) and isinstance(calls["forecast_units"], str)
    assert int(calls["forecast_units"]) >= int(calls["units_to_date"]) > 0
    assert calls["top_dimension"]["dimension"] == "endpoint"
    assert calls["top_dimension"]["value"] == "/v1/search"
    assert "of them to /v1/search; the first 1M are included" in calls["explanation"]
    for tier in calls["tiers_to_date"] + calls["tiers_projected"]:
        assert set(tier) == {
            "tier",
            "from_units",
            "to_units",
            "units",
            "unit_price",
            "flat_fee",
            "amount",
        }
        assert isinstance(tier["unit_price"], str)
    assert calls["tiers_to_date"][0]["tier"] == 1
    assert calls["tiers_to_date"][0]["unit_price"] == "0.0004"
    fee = body["lines"][0]
    assert fee["meter"] is None and fee["units_to_date"] is None and fee["tiers_to_date"] == []
    for line in body["lines"]:
        assert type(line["amount_to_date_minor"]) is int
        assert line["amount_to_date_formatted"] == format_money(line["amount_to_date_minor"], "USD")
        assert line["projected_amount_formatted"] == format_money(
            line["projected_amount_minor"], "USD"
        )
        assert line["explanation"]
    # Totals are the sums of the lines.
    assert body["to_date_total_minor"] == sum(x["amount_to_date_minor"] for x in body["lines"])
    assert body["projected_total_minor"] == sum(x["projected_amount_minor"] for x in body["lines"])
    assert body["projected_total_formatted"] == format_money(body["projected_total_minor"], "USD")
    previous = body["previous_period"]
    assert previous["source"] == "usage"  # over, not invoiced yet
    assert previous["total_formatted"] == format_money(previous["total_minor"], "USD")
    assert body["change"]["amount_minor"] == body["projected_total_minor"] - previous["total_minor"]
    assert body["summary"].startswith(body["to_date_total_formatted"] + " so far in the period")


def test_unknown_account_is_404(api_client):
    response = _client(api_client).get(URL.format("nobody"))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_account_without_a_subscription_is_409_with_a_clear_code(api_client):
    account = AccountFactory()

    response = _client(api_client).get(URL.format(account.external_id))

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "no_active_subscription"
    assert account.external_id in body["message"]


def test_the_read_scope_is_required(api_client, scenario):
    response = _client(api_client, scopes="ingest").get(URL.format(scenario.account.external_id))

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert api_client.get(URL.format(scenario.account.external_id)).status_code in (401, 403)


def test_the_operation_is_documented_in_the_openapi_schema(api_client):
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    operation = response.json()["paths"]["/api/v1/accounts/{external_id}/projected-invoice"]["get"]
    assert operation["operationId"] == "accounts_projected_invoice_retrieve"
    assert set(operation["responses"]) >= {"200", "404", "409"}
    schema = response.json()["components"]["schemas"]
    line = schema["ProjectedLine"]["properties"]
    assert line["units_to_date"]["type"] == "string"
    assert line["amount_to_date_minor"]["type"] == "integer"
    assert "explanation" in line
