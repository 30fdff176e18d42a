"""GET /api/v1/reconciliation/mismatches: the contract's fields, filters, paging, the schema."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from billing.providers.simulated import FaultSettings, SimulatedProvider
from reconciliation.models import Mismatch
from reconciliation.services import reconciliation_run
from tests.metering.factories import api_key_for
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    push,
    today,
    usage_for,
)

pytestmark = pytest.mark.django_db

FIELDS = {
    "id",
    "account",
    "meter",
    "period_start",
    "period_end",
    "status",
    "causes",
    "ours",
    "reported",
    "provider",
    "invoiced",
    "delta",
    "delta_amount_minor",
    "currency",
    "platform",
    "days",
}


@pytest.fixture
def mismatches():
    """Three accounts with dropped usage on two meters each: 6 open mismatches."""
    meters = meters_count_sum_max()
    plan = plan_for(meters)
    accounts = []
    for n in range(3):
        account, period = account_with_period(
            external_id=f"api-{n}",
            tz="UTC",
            plan=plan,
            start=today() - timedelta(days=32),
            end=today() - timedelta(days=2),
        )
        ingest([e for m in meters[:2] for e in usage_for(account, m, period, per_day=1 + n)])
        accounts.append(account)
    push(FaultSettings(seed=9, drop_rate=Decimal("0.3")))
    for account in accounts:
        reconciliation_run(account=account, provider=SimulatedProvider())
    assert Mismatch.objects.count() == 6
    return accounts


@pytest.fixture
def reader(api_client):
    _, raw = api_key_for("read")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


URL = "/api/v1/reconciliation/mismatches"


def test_lists_open_mismatches_by_money_with_the_contract_fields(
    mismatches, reader, django_assert_max_num_queries
):
    Mismatch.objects.filter(meter__code="storage", account__external_id="api-0").update(
        status="resolved", resolution="accepted"
    )

    with django_assert_max_num_queries(5):
        body = reader.get(URL).json()

    assert set(body) == {"results", "next"} and body["next"] is None
    results = body["results"]
    assert len(results) == 5
    first = results[0]
    assert set(first) == FIELDS
    amounts = [r["delta_amount_minor"] for r in results]
    assert amounts == sorted(amounts, reverse=True)
    assert isinstance(first["ours"], str) and isinstance(first["delta"], str)
    assert Decimal(first["delta"]) == Decimal(first["ours"]) - Decimal(first["provider"])
    assert first["invoiced"] is None and first["currency"] == "USD"
    assert first["platform"] == "simulated"
    assert first["causes"][0]["code"] == "provider_missing"
    day = first["days"][0]
    assert set(day) == {"day", "ours", "reported", "provider"}
    assert len(first["days"]) == 32 and isinstance(day["ours"], str)


def test_filters_by_status_account_meter_and_cause(mismatches, reader):
    Mismatch.objects.filter(account__external_id="api-1", meter__code="calls").update(
        status="acknowledged"
    )

    def ids(**query):
        response = reader.get(URL, query)
        assert response.status_code == 200, response.content
        return {(r["account"], r["meter"], r["status"]) for r in response.json()["results"]}

    assert ids(status="acknowledged") == {("api-1", "calls", "acknowledged")}
    assert ids(account="api-2") == {("api-2", "calls", "open"), ("api-2", "storage", "open")}
    assert len(ids(meter="storage")) == 3
    assert len(ids(cause="provider_missing")) == 5
    assert ids(cause="day_shift") == set()
    bad = reader.get(URL, {"status": "closed"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"
    assert reader.get(URL, {"cause": "gremlins"}).status_code == 400


def test_pages_follow_next_without_gaps_or_repeats(mismatches, reader):
    seen = []
    url = f"{URL}?limit=4"
    while url:
        body = reader.get(url).json()
        seen.extend(r["id"] for r in body["results"])
        url = body["next"]

    assert len(seen) == 6 == len(set(seen))


def test_needs_the_read_scope(mismatches, api_client):
    _, raw = api_key_for("ingest")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert api_client.get(URL).status_code == 403
    api_client.credentials()
    assert api_client.get(URL).status_code == 401


def test_the_schema_documents_the_endpoint_and_its_fields(client):
    schema = json.loads(client.get("/api/schema/?format=json").content)

    operation = schema["paths"][URL]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"status", "account", "meter", "cause"}
    page = schema["components"]["schemas"]["MismatchPage"]
    assert set(page["properties"]) == {"results", "next"}
    assert set(schema["components"]["schemas"]["Mismatch"]["properties"]) == FIELDS


def test_an_unknown_or_misspelt_filter_is_refused_not_ignored(reader):
    # Found by the API fuzzer: `?plataform=orb` answered every platform's mismatches.
    answer = reader.get(URL, {"plataform": "orb"})
    assert answer.status_code == 400
    body = answer.json()
    assert body["code"] == "invalid_parameter" and body["errors"][0]["field"] == "plataform"


@pytest.mark.parametrize("param", ["status", "cause"])
def test_an_empty_status_or_cause_is_refused_not_taken_as_no_filter(reader, param):
    # Found by the API fuzzer: `?cause=` (not one of the documented causes) answered 200.
    answer = reader.get(URL, {param: ""})
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["field"] == param
