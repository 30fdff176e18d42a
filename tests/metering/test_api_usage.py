"""GET /api/v1/accounts/{external_id}/usage: series from rollups, exact totals, clear errors."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from metering.models import Meter
from metering.services import rollups
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for
from tests.metering.rollup_support import event, insert, utc

pytestmark = pytest.mark.django_db

A = Meter.Aggregation
URL = "/api/v1/accounts/{}/usage"


@pytest.fixture
def reader(api_client):
    _key, raw = api_key_for("read")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


@pytest.fixture
def kolkata():
    return AccountFactory(external_id="acme", timezone="Asia/Kolkata")


@pytest.fixture
def calls():
    return MeterFactory(code="api_calls", unit="calls", dimensions=["endpoint", "region"])


def get(client, external_id="acme", **params):
    response = client.get(URL.format(external_id), params)
    return response, json.loads(response.content)


def test_daily_series_uses_local_days_and_answers_decimals_as_strings(reader, kolkata):
    gb = MeterFactory(code="storage", aggregation=A.SUM, value_property="gb", unit="GB")
    insert(
        # 18:29 UTC is 23:59 on Jan 1 in Kolkata, 18:30 UTC is midnight of Jan 2.
        event(kolkata, gb, utc(2024, 1, 1, 18, 29), "1.25"),
        event(kolkata, gb, utc(2024, 1, 1, 18, 30), "2.50"),
        event(kolkata, gb, utc(2024, 1, 3, 5), "0.000000000001"),
    )
    rollups.rollup_drain()

    response, body = get(reader, meter="storage", **{"from": "2024-01-01", "to": "2024-01-05"})

    assert response.status_code == 200
    assert body == {
        "account": "acme",
        "meter": "storage",
        "unit": "GB",
        "aggregation": "sum",
        "timezone": "Asia/Kolkata",
        "granularity": "day",
        "from": "2024-01-01",
        "to": "2024-01-05",
        "starts_at": "2023-12-31T18:30:00Z",
        "ends_at": "2024-01-04T18:30:00Z",
        "group_by": None,
        "total": "3.750000000001",
        "group_totals": {},
        "folded": False,
        "series": [
            {"start": "2024-01-01", "value": "1.25", "groups": {}},
            {"start": "2024-01-02", "value": "2.5", "groups": {}},
            {"start": "2024-01-03", "value": "0.000000000001", "groups": {}},
            {"start": "2024-01-04", "value": "0", "groups": {}},
        ],
    }


def test_group_by_breaks_each_day_down_with_the_rest_as_other(reader, kolkata, calls):
    day = utc(2024, 1, 2, 6)
    insert(
        *(event(kolkata, calls, day, properties={"endpoint": "/search"}) for _ in range(5)),
        *(event(kolkata, calls, day, properties={"endpoint": "/items"}) for _ in range(3)),
        event(kolkata, calls, day + timedelta(days=1), properties={"endpoint": "/login"}),
        event(kolkata, calls, day + timedelta(days=1), properties={"endpoint": "/search"}),
    )
    rollups.rollup_drain()

    response, body = get(
        reader,
        meter="api_calls",
        group_by="endpoint",
        top="1",
        **{"from": "2024-01-02", "to": "2024-01-04"},
    )

    assert response.status_code == 200
    assert body["total"] == "10"
    assert body["group_by"] == "endpoint"
    assert body["group_totals"] == {"/search": "6", "other": "4"}
    assert body["series"] == [
        {"start": "2024-01-02", "value": "8", "groups": {"/search": "5", "other": "3"}},
        {"start": "2024-01-03", "value": "2", "groups": {"/search": "1", "other": "1"}},
    ]


def test_unique_count_total_counts_distinct_values_over_the_range(reader, kolkata):
    users = MeterFactory(code="users", aggregation=A.UNIQUE_COUNT, value_property="user")
    first = utc(2024, 1, 2, 6)
    insert(
        event(kolkata, users, first, unique="alice"),
        event(kolkata, users, first, unique="bob"),
        event(kolkata, users, first + timedelta(days=1), unique="alice"),
    )
    rollups.rollup_drain()

    _response, body = get(reader, meter="users", **{"from": "2024-01-02", "to": "2024-01-04"})

    assert [p["value"] for p in body["series"]] == ["2", "1"]
    assert body["total"] == "2"  # alice once, not a sum of days (3)


def test_max_of_an_empty_day_is_null(reader, kolkata):
    peak = MeterFactory(code="peak", aggregation=A.MAX, value_property="n", unit="cpus")
    insert(event(kolkata, peak, utc(2024, 1, 2, 6), "4"))
    rollups.rollup_drain()

    _response, body = get(reader, meter="peak", **{"from": "2024-01-02", "to": "2024-01-04"})

    assert [p["value"] for p in body["series"]] == ["4", None]
    assert body["total"] == "4"


def test_hourly_series_is_in_utc_hours_with_rfc3339_bounds(reader, kolkata, calls):
    insert(
        event(kolkata, calls, utc(2024, 1, 1, 18, 10)),
        event(kolkata, calls, utc(2024, 1, 1, 18, 50)),
        event(kolkata, calls, utc(2024, 1, 1, 19, 0)),
    )
    rollups.rollup_drain()

    response, body = get(
        reader,
        meter="api_calls",
        granularity="hour",
        **{"from": "2024-01-01T18:00:00Z", "to": "2024-01-02T01:30:00+05:30"},
    )

    assert response.status_code == 200
    assert (body["from"], body["to"]) == ("2024-01-01T18:00:00Z", "2024-01-01T20:00:00Z")
    assert body["series"] == [
        {"start": "2024-01-01T18:00:00Z", "value": "2", "groups": {}},
        {"start": "2024-01-01T19:00:00Z", "value": "1", "groups": {}},
    ]
    assert body["total"] == "3"


def test_hourly_dates_are_local_midnights_in_whole_hour_zones(reader, calls):
    AccountFactory(external_id="berlin", timezone="Europe/Berlin")

    _response, body = get(
        reader,
        "berlin",
        meter="api_calls",
        granularity="hour",
        **{"from": "2024-07-01", "to": "2024-07-02"},
    )

    assert body["starts_at"] == "2024-06-30T22:00:00Z"
    assert len(body["series"]) == 24


def test_daily_bounds_may_be_the_instants_local_days_start(reader, kolkata, calls):
    response, body = get(
        reader,
        meter="api_calls",
        # A bare "+" arrives as a space; it is read back as "+".
        **{"from": "2024-01-01T00:00:00 05:30", "to": "2024-01-02T18:30:00Z"},
    )

    assert response.status_code == 200, body
    assert (body["from"], body["to"]) == ("2024-01-01", "2024-01-03")


@pytest.mark.parametrize(
    ("params", "code", "field", "words"),
    [
        ({"from": "2024-01-05", "to": "2024-01-05"}, "invalid_range", "to", "empty"),
        ({"from": "2024-01-05", "to": "2024-01-01"}, "invalid_range", "to", "empty"),
        ({"from": "yesterday", "to": "2024-01-05"}, "invalid_parameter", "from", "RFC 3339"),
        (
            {"from": "2024-01-01T00:00:00", "to": "2024-01-05"},
            "invalid_parameter",
            "from",
            "offset",
        ),
        ({"from": "2024-01-01"}, "missing_parameter", "to", "required"),
        (
            {"from": "2024-01-01T00:00:00Z", "to": "2024-01-05"},
            "invalid_range",
            "from",
            "Asia/Kolkata",
        ),
        ({"from": "2023-01-01", "to": "2024-02-06"}, "range_too_large", "to", "at most 400 days"),
        (
            {"from": "2024-01-01T00:00:00Z", "to": "2024-03-01T00:00:00Z", "granularity": "hour"},
            "range_too_large",
            "to",
            "at most 1080 hours",
        ),
        (
            {"from": "2024-01-01", "to": "2024-01-02", "granularity": "hour"},
            "invalid_range",
            "from",
            "whole UTC hours",
        ),
        (
            {"from": "2024-01-01", "to": "2024-01-02", "granularity": "week"},
            "invalid_parameter",
            "granularity",
            "'day' or 'hour'",
        ),
        (
            {"from": "2024-01-01", "to": "2024-01-02", "group_by": "endpoint", "top": "0"},
            "invalid_parameter",
            "top",
            "1 to 100",
        ),
        (
            {"from": "2024-01-01", "to": "2024-01-02", "group_by": "tier"},
            "unknown_dimension",
            "group_by",
            "endpoint, region",
        ),
    ],
)
def test_bad_requests_are_400_with_a_code_and_the_field(
    reader, kolkata, calls, params, code, field, words
):
    response, body = get(reader, meter="api_calls", **params)

    assert response.status_code == 400
    assert body["code"] == code
    assert words in body["message"]
    assert body["errors"] == [{"field": field, "code": code, "message": body["message"]}]


def test_unknown_and_missing_meters_are_400(reader, kolkata):
    response, body = get(reader, meter="nope", **{"from": "2024-01-01", "to": "2024-01-02"})
    assert (response.status_code, body["code"]) == (400, "unknown_meter")

    response, body = get(reader, **{"from": "2024-01-01", "to": "2024-01-02"})
    assert (response.status_code, body["code"]) == (400, "missing_parameter")
    assert body["errors"][0]["field"] == "meter"


def test_unknown_account_is_404_not_found(reader, calls):
    response, body = get(
        reader, "ghost", meter="api_calls", **{"from": "2024-01-01", "to": "2024-01-02"}
    )

    assert response.status_code == 404
    assert body["code"] == "not_found"
    assert "ghost" in body["message"]


def test_usage_needs_a_key_with_the_read_scope(api_client, kolkata, calls):
    params = {"meter": "api_calls", "from": "2024-01-01", "to": "2024-01-02"}
    assert api_client.get(URL.format("acme"), params).status_code == 401

    _key, raw = api_key_for("ingest")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api_client.get(URL.format("acme"), params)
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


def test_query_count_is_bounded_and_does_not_grow_with_days_or_events(
    reader, kolkata, calls, django_assert_max_num_queries
):
    insert(
        *(
            event(
                kolkata,
                calls,
                utc(2024, 1, 1) + timedelta(hours=7 * n),
                properties={"endpoint": f"/e{n % 7}"},
            )
            for n in range(400)
        )
    )
    rollups.rollup_drain()
    reader.get(URL.format("acme"), {"meter": "api_calls", "from": "2024-01-01", "to": "2024-01-02"})

    def queries(**params) -> int:
        with CaptureQueriesContext(connection) as ctx:
            response = reader.get(URL.format("acme"), {"meter": "api_calls", **params})
        assert response.status_code == 200
        return len(ctx.captured_queries)

    short = queries(**{"from": "2024-01-01", "to": "2024-01-03"}, group_by="endpoint")
    long = queries(**{"from": "2024-01-01", "to": "2025-01-01"}, group_by="endpoint")
    assert short == long
    with django_assert_max_num_queries(5):
        reader.get(
            URL.format("acme"), {"meter": "api_calls", "from": "2024-01-01", "to": "2024-04-01"}
        )
    with django_assert_max_num_queries(8):
        reader.get(
            URL.format("acme"),
            {
                "meter": "api_calls",
                "from": "2024-01-01",
                "to": "2024-04-01",
                "group_by": "endpoint",
            },
        )


def test_schema_documents_the_usage_endpoint(client):
    schema = json.loads(client.get("/api/schema/?format=json").content)
    operation = schema["paths"]["/api/v1/accounts/{external_id}/usage"]["get"]

    params = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert {"meter", "from", "to", "granularity", "group_by", "top"} <= set(params)
    assert params["meter"]["required"] and params["from"]["required"] and params["to"]["required"]
    assert params["granularity"]["schema"]["enum"] == ["day", "hour"]
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "404"}
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert {
        "account",
        "meter",
        "unit",
        "aggregation",
        "timezone",
        "granularity",
        "from",
        "to",
        "total",
        "series",
    } <= set(body["properties"])
    assert operation["security"] == [{"ApiKey": []}]


def test_events_without_the_grouped_property_are_named_none(reader, kolkata, calls):
    day = utc(2024, 1, 2, 6)
    insert(
        event(kolkata, calls, day, properties={"endpoint": "/search"}),
        event(kolkata, calls, day, properties={"region": "eu"}),  # no endpoint
        event(kolkata, calls, day),
    )
    rollups.rollup_drain()

    _response, body = get(
        reader, meter="api_calls", group_by="endpoint", **{"from": "2024-01-02", "to": "2024-01-03"}
    )

    assert body["group_totals"] == {"(none)": "2", "/search": "1"}
    assert body["series"] == [
        {"start": "2024-01-02", "value": "3", "groups": {"(none)": "2", "/search": "1"}}
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"from": "2023-01-01", "to": "2024-02-06"},
            "A daily series covers at most 400 days; this range has 401 days. "
            "Ask for a shorter range (several requests for a longer one).",
        ),
        (
            {"from": "2024-01-01T00:00:00Z", "to": "2024-03-01T00:00:00Z", "granularity": "hour"},
            "An hourly series covers at most 1080 hours (45 days); this range has 1440 hours. "
            "Ask for a shorter range, or for granularity=day.",
        ),
    ],
)
def test_range_too_large_says_what_to_ask_for_instead(reader, kolkata, calls, params, message):
    _response, body = get(reader, meter="api_calls", **params)

    assert body["code"] == "range_too_large"
    assert body["message"] == message
