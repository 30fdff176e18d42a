from __future__ import annotations

import pytest

from alerts.models import Alert
from tests.alerts.factories import AlertFactory, default_rule
from tests.metering.factories import AccountFactory, api_key_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader(api_client):
    _, raw = api_key_for("read")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


def test_alert_list_answers_the_contract_with_decimals_as_strings(reader):
    alert = AlertFactory(account=AccountFactory(external_id="acme"))
    body = reader.get("/api/v1/alerts").json()
    assert body == {
        "results": [
            {
                "id": alert.pk,
                "account": "acme",
                "meter": "api_calls",
                "kind": "spike",
                "level": "critical",
                "status": "open",
                "opened_at": "2024-03-20T13:00:00Z",
                "observed": "10000",
                "baseline": "1000",
                "multiple": "10",
                "period_usage": "29000",
                "previous_period_usage": "29000",
                "projected_invoice_minor": 155000,
                "currency": "USD",
                "message": alert.message,
            }
        ],
        "next": None,
    }


def test_alert_list_filters_by_status_account_and_kind(reader):
    acme, other = AccountFactory(external_id="acme"), AccountFactory(external_id="other")
    spike = AlertFactory(account=acme)
    AlertFactory(account=other)
    quota = AlertFactory(account=acme, rule=default_rule("quota"), period_key="2024-03")
    AlertFactory(account=acme, status=Alert.Status.RESOLVED)

    def ids(query):
        return [r["id"] for r in reader.get(f"/api/v1/alerts?{query}").json()["results"]]

    assert ids("account=acme&status=open") == [quota.pk, spike.pk]
    assert ids("account=acme&kind=quota") == [quota.pk]
    assert reader.get("/api/v1/alerts?kind=nope").json()["code"] == "invalid_parameter"


def test_alert_list_pages_with_next(reader, django_assert_max_num_queries):
    alerts = [AlertFactory(status=Alert.Status.RESOLVED) for _ in range(5)]
    with django_assert_max_num_queries(4):
        page = reader.get("/api/v1/alerts?limit=2&status=resolved").json()
    assert [r["id"] for r in page["results"]] == [alerts[4].pk, alerts[3].pk]
    seen = [r["id"] for r in page["results"]]
    while page["next"]:
        page = reader.get(page["next"]).json()
        seen += [r["id"] for r in page["results"]]
    assert seen == [a.pk for a in reversed(alerts)]


def test_alert_list_needs_the_read_scope(api_client):
    _, raw = api_key_for("ingest")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api_client.get("/api/v1/alerts").status_code == 403


def test_alert_list_is_in_the_openapi_schema(reader):
    schema = reader.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/alerts"]["get"]
    assert operation["operationId"] == "alerts_list"
    assert {p["name"] for p in operation["parameters"]} >= {"status", "account", "kind"}


def test_alert_list_refuses_a_limit_or_cursor_it_did_not_give(reader):
    for query in ("limit=0", "limit=201", "limit=x", "before=abc", "before=%C2%B2"):
        response = reader.get(f"/api/v1/alerts?{query}")
        assert response.status_code == 400, query
        body = response.json()
        assert body["code"] == "invalid_parameter"
        assert body["errors"][0]["field"] == query.split("=")[0]


def test_alert_list_refuses_a_filter_outside_its_enum_even_empty(reader):
    for query in ("kind=", "status=", "kind=explosion", "status=closed"):
        response = reader.get(f"/api/v1/alerts?{query}")
        assert response.status_code == 400, query
        assert response.json()["errors"][0]["field"] == query.split("=")[0]
