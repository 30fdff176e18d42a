"""The OpenAPI schema is part of the contract; /healthz answers for load balancers."""

from __future__ import annotations

import json

import pytest
from django.db import OperationalError, connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def _ref(schema, ref: str) -> dict:
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def test_schema_documents_the_public_paths_and_methods(schema):
    paths = schema["paths"]

    assert set(paths["/api/v1/events"]) >= {"post"}
    assert set(paths["/api/v1/events/batch"]) >= {"post"}
    assert set(paths["/api/v1/accounts/{external_id}"]) >= {"get", "put"}
    assert set(paths["/api/v1/meters"]) >= {"get"}
    assert set(paths["/api/v1/meters/{code}"]) >= {"put"}


def test_schema_documents_the_batch_response_fields(schema):
    ok = schema["paths"]["/api/v1/events/batch"]["post"]["responses"]["200"]
    batch = _ref(schema, ok["content"]["application/json"]["schema"]["$ref"])

    assert set(batch["properties"]) == {
        "accepted",
        "duplicates",
        "quarantined",
        "conflicts",
        "rejected",
        "results",
    }
    item = _ref(schema, batch["properties"]["results"]["items"]["$ref"])
    assert set(item["properties"]) == {"index", "transaction_id", "status", "errors"}
    status = item["properties"]["status"]
    choices = _ref(schema, status["$ref"])["enum"] if "$ref" in status else status["enum"]
    assert set(choices) == {"accepted", "duplicate", "quarantined", "conflict", "rejected"}


def test_schema_documents_both_event_formats_and_the_error_shape(schema):
    single = schema["paths"]["/api/v1/events"]["post"]
    batch = schema["paths"]["/api/v1/events/batch"]["post"]

    assert set(single["requestBody"]["content"]) == {
        "application/json",
        "application/cloudevents+json",
    }
    assert set(batch["requestBody"]["content"]) == {
        "application/json",
        "application/cloudevents-batch+json",
    }
    assert {"200", "400", "401", "403", "409", "413", "415"} <= set(single["responses"])
    error = _ref(schema, batch["responses"]["413"]["content"]["application/json"]["schema"]["$ref"])
    assert set(error["properties"]) == {"code", "message", "errors"}


def test_schema_documents_bearer_keys(schema):
    schemes = schema["components"]["securitySchemes"]

    assert schemes["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["ApiKey"]["description"],
    }
    assert schema["paths"]["/api/v1/events"]["post"]["security"] == [{"ApiKey": []}]


def test_account_put_documents_its_body(schema):
    put = schema["paths"]["/api/v1/accounts/{external_id}"]["put"]
    body = _ref(schema, put["requestBody"]["content"]["application/json"]["schema"]["$ref"])

    assert set(body["properties"]) == {"name", "timezone", "currency", "tier", "metadata"}
    assert {"200", "201", "400"} <= set(put["responses"])


def test_api_docs_page_is_served(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_the_database_fails(client, monkeypatch):
    def broken_cursor(*args, **kwargs):
        raise OperationalError("database is down")

    monkeypatch.setattr(connection, "cursor", broken_cursor)
    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["status"] == "error"
