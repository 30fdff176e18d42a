"""POST /api/v1/events and /api/v1/events/batch: formats, exactly-once, exact values, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from metering import exact_json, ingest_sql
from metering.models import Meter, QuarantinedEvent, RollupInbox, UsageEvent
from metering.services.ingest import events_ingest, late_cutoff
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db

SINGLE = "/api/v1/events"
BATCH = "/api/v1/events/batch"
CE = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"


@pytest.fixture
def client(api_client):
    _key, raw = api_key_for(["ingest"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


@pytest.fixture
def setup():
    AccountFactory(external_id="acme")
    return {
        "calls": MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT),
        "tokens": MeterFactory(code="tokens", aggregation="sum", value_property="tokens"),
        "peak": MeterFactory(code="peak", aggregation="max", value_property="gb"),
        "seats": MeterFactory(code="seats", aggregation="unique_count", value_property="user"),
        "level": MeterFactory(code="level", aggregation="latest", value_property="level"),
    }


def post(client, path, body, content_type="application/json"):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.generic("POST", path, data, content_type=content_type)


def lago(tid="t1", code="calls", customer="acme", timestamp=None, **properties):
    event = {"transaction_id": tid, "external_customer_id": customer, "code": code}
    event["timestamp"] = (
        timestamp if timestamp is not None else int(timezone.now().timestamp()) - 60
    )
    if properties:
        event["properties"] = properties
    return event


def cloudevent(eid="c1", source="//shop/api", type_="calls", subject="acme", **data):
    ce = {"specversion": "1.0", "id": eid, "source": source, "type": type_, "subject": subject}
    ce["time"] = (timezone.now() - timedelta(minutes=1)).isoformat()
    if data:
        ce["data"] = data
    return ce


# --- single event -------------------------------------------------------------------------------


def test_single_lago_event_is_accepted_and_stored(client, setup):
    response = post(client, SINGLE, {"event": lago("t1", "tokens", tokens=12)})

    assert response.status_code == 200, response.content
    body = response.json()
    event = UsageEvent.objects.get()
    assert body == {"status": "accepted", "transaction_id": "t1", "event_id": event.id}
    assert event.value == Decimal("12")
    assert event.meter == setup["tokens"]
    assert event.source == ""
    assert RollupInbox.objects.filter(event_id=event.id).exists()


def test_single_event_retry_is_a_duplicate_and_stores_nothing(client, setup):
    event = lago("t1", "tokens", tokens="3.5")
    first = post(client, SINGLE, {"event": event})
    second = post(client, SINGLE, {"event": event})

    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json() == {
        "status": "duplicate",
        "transaction_id": "t1",
        "event_id": first.json()["event_id"],
    }
    assert UsageEvent.objects.count() == 1


def test_same_id_with_a_different_value_is_a_409_conflict_and_writes_nothing(client, setup):
    post(client, SINGLE, {"event": lago("t1", "tokens", timestamp=1_700_000_000, tokens=5)})
    response = post(
        client, SINGLE, {"event": lago("t1", "tokens", timestamp=1_700_000_000, tokens=6)}
    )

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert response.json()["status"] == "conflict"
    assert [e.value for e in UsageEvent.objects.all()] == [Decimal("5")]


def test_same_content_with_keys_reordered_and_number_respelled_is_a_duplicate(client, setup):
    post(
        client,
        SINGLE,
        '{"event": {"transaction_id": "t1", "external_customer_id": "acme", "code": "tokens",'
        ' "timestamp": 1700000000, "properties": {"tokens": 2.50, "region": "eu"}}}',
    )
    response = post(
        client,
        SINGLE,
        '{"event": {"code": "tokens", "external_customer_id": "acme", "transaction_id": "t1",'
        ' "timestamp": "2023-11-14T22:13:20Z", "properties": {"region": "eu", "tokens": 2.5}}}',
    )

    assert response.json()["status"] == "duplicate"


def test_single_cloudevent_is_stored_with_source_as_identity(client, setup):
    response = post(client, SINGLE, cloudevent("c1", type_="tokens", tokens=7), CE)

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "accepted"
    event = UsageEvent.objects.get()
    assert (event.source, event.transaction_id, event.value) == ("//shop/api", "c1", Decimal("7"))
    assert event.properties == {"tokens": 7}


def test_cloudevent_same_id_from_another_source_is_another_event(client, setup):
    post(client, SINGLE, cloudevent("c1", source="//a"), CE)
    response = post(client, SINGLE, cloudevent("c1", source="//b"), CE)

    assert response.json()["status"] == "accepted"
    assert UsageEvent.objects.count() == 2


def test_lago_external_subscription_id_is_ignored(client, setup):
    event = lago("t1") | {"external_subscription_id": "sub_1"}
    response = post(client, SINGLE, {"event": event})

    assert response.json()["status"] == "accepted"


# --- batches ------------------------------------------------------------------------------------


def test_batch_answers_one_result_per_item_in_order_with_counts(client, setup):
    AccountFactory(external_id="other")
    post(client, SINGLE, {"event": lago("dup", timestamp=1_700_000_000)})
    post(client, SINGLE, {"event": lago("clash", "tokens", timestamp=1_700_000_000, tokens=1)})
    events = [
        lago("new"),
        lago("dup", timestamp=1_700_000_000),
        lago("q", customer="nobody"),
        lago("clash", "tokens", timestamp=1_700_000_000, tokens=2),
        lago("bad", "tokens", tokens="lots"),
    ]

    response = post(client, BATCH, {"events": events})

    assert response.status_code == 200
    body = response.json()
    assert [(r["index"], r["transaction_id"], r["status"]) for r in body["results"]] == [
        (0, "new", "accepted"),
        (1, "dup", "duplicate"),
        (2, "q", "quarantined"),
        (3, "clash", "conflict"),
        (4, "bad", "rejected"),
    ]
    assert {
        k: body[k] for k in ("accepted", "duplicates", "quarantined", "conflicts", "rejected")
    } == {
        "accepted": 1,
        "duplicates": 1,
        "quarantined": 1,
        "conflicts": 1,
        "rejected": 1,
    }
    assert body["results"][4]["errors"] == [
        {
            "field": "properties.tokens",
            "code": "invalid_value",
            "message": body["results"][4]["errors"][0]["message"],
        }
    ]
    assert UsageEvent.objects.count() == 3


def test_replaying_a_whole_batch_stores_nothing_new(client, setup):
    events = [lago(f"t{i}", "tokens", timestamp=1_700_000_000 + i, tokens=i) for i in range(50)]
    first = post(client, BATCH, {"events": events}).json()
    before = list(UsageEvent.objects.order_by("id").values_list("id", "value"))

    again = post(client, BATCH, {"events": events}).json()

    assert first["accepted"] == 50
    assert again["duplicates"] == 50 and again["accepted"] == 0
    assert list(UsageEvent.objects.order_by("id").values_list("id", "value")) == before
    assert RollupInbox.objects.count() == 50


def test_same_key_twice_in_one_batch_stores_one_event(client, setup):
    event = lago("twice", "tokens", timestamp=1_700_000_000, tokens=1)
    body = post(client, BATCH, {"events": [event, event]}).json()

    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate"]
    assert UsageEvent.objects.count() == 1


def test_same_key_twice_in_one_batch_with_different_content_is_a_conflict(client, setup):
    a = lago("twice", "tokens", timestamp=1_700_000_000, tokens=1)
    b = lago("twice", "tokens", timestamp=1_700_000_000, tokens=2)
    body = post(client, BATCH, {"events": [a, b]}).json()

    assert [r["status"] for r in body["results"]] == ["accepted", "conflict"]
    assert UsageEvent.objects.get().value == Decimal("1")


def test_cloudevents_batch_is_a_json_array(client, setup):
    response = post(client, BATCH, [cloudevent("a"), cloudevent("b"), {"id": "x"}], CE_BATCH)

    assert response.status_code == 200
    body = response.json()
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted", "rejected"]
    assert {e["code"] for e in body["results"][2]["errors"]} == {"missing_field"}


def test_a_batch_item_that_is_not_an_object_is_rejected_alone(client, setup):
    body = post(client, BATCH, {"events": [lago("ok"), "nope", 3]}).json()

    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected"]
    assert body["results"][1]["errors"][0]["code"] == "invalid_event"


def test_an_empty_batch_is_answered_with_zero_counts(client, setup):
    body = post(client, BATCH, {"events": []}).json()

    assert body["accepted"] == 0 and body["results"] == []


# --- exact values -------------------------------------------------------------------------------


def test_values_are_stored_exactly_without_float_rounding(client, setup):
    raw = (
        '{"events": ['
        '{"transaction_id": "big", "external_customer_id": "acme", "code": "tokens",'
        ' "timestamp": 1700000000, "properties": {"tokens": 12345678901234567.123456789012}},'
        '{"transaction_id": "tenth", "external_customer_id": "acme", "code": "tokens",'
        ' "timestamp": 1700000000, "properties": {"tokens": 0.1, "huge": 1180591620717411303424}},'
        '{"transaction_id": "str", "external_customer_id": "acme", "code": "peak",'
        ' "timestamp": 1700000000, "properties": {"gb": "99999999999999999999999999.5e-1"}}'
        "]}"
    )
    body = post(client, BATCH, raw).json()

    assert body["accepted"] == 3, body
    values = dict(UsageEvent.objects.values_list("transaction_id", "value"))
    assert values["big"] == Decimal("12345678901234567.123456789012")
    assert values["tenth"] == Decimal("0.1")
    assert values["str"] == Decimal("9999999999999999999999999.95")
    with ingest_sql._cursor() as cur:  # the JSON as stored, not through a float
        cur.execute(
            "SELECT properties::text FROM metering_usageevent WHERE transaction_id = 'big'"
            " UNION ALL "
            "SELECT properties::text FROM metering_usageevent WHERE transaction_id = 'tenth'"
        )
        big, tenth = (exact_json.loads(row[0]) for row in cur.fetchall())
    assert big["tokens"] == Decimal("12345678901234567.123456789012")
    assert tenth == {"tokens": Decimal("0.1"), "huge": 2**70}


def test_count_meter_stores_one_and_unique_count_stores_the_value_as_text(client, setup):
    events = [
        lago("c", "calls"),
        lago("u1", "seats", user="alice"),
        lago("u2", "seats", user=42),
        lago("u3", "seats", user=1.50),
    ]
    body = post(client, BATCH, {"events": events}).json()

    assert body["accepted"] == 4
    rows = dict(UsageEvent.objects.values_list("transaction_id", "value"))
    assert rows["c"] == Decimal("1")
    assert rows["u1"] is None
    uniques = dict(UsageEvent.objects.values_list("transaction_id", "unique_value"))
    assert (uniques["u1"], uniques["u2"], uniques["u3"]) == ("alice", "42", "1.5")


def test_latest_and_max_meters_take_negative_and_zero_values(client, setup):
    body = post(
        client, BATCH, {"events": [lago("a", "level", level=-3.25), lago("b", "peak", gb=0)]}
    ).json()

    assert body["accepted"] == 2
    assert sorted(UsageEvent.objects.values_list("value", flat=True)) == [
        Decimal("-3.25"),
        Decimal("0"),
    ]


# --- time ---------------------------------------------------------------------------------------


def test_timestamps_in_every_accepted_form_are_stored_in_utc(client, setup):
    events = [
        lago("int", timestamp=1_700_000_000),
        lago("frac", timestamp=1_700_000_000.123456),
        lago("numstr", timestamp="1700000000.5"),
        lago("rfc", timestamp="2023-11-14T23:13:20.25+01:00"),
    ]
    body = post(client, BATCH, {"events": events}).json()

    assert body["accepted"] == 4, body
    at = dict(UsageEvent.objects.values_list("transaction_id", "occurred_at"))
    base = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert at["int"] == base
    assert at["frac"] == base + timedelta(microseconds=123456)
    assert at["numstr"] == base + timedelta(milliseconds=500)
    assert at["rfc"] == base + timedelta(milliseconds=250)


def test_old_events_are_accepted_and_marked_late(client, setup):
    now = timezone.now()
    cutoff = late_cutoff(now)
    events = [
        lago("old", timestamp=int((cutoff - timedelta(seconds=1)).timestamp())),
        lago("yesterday", timestamp=int(cutoff.timestamp()) + 1),
        lago("now", timestamp=int(now.timestamp())),
    ]
    body = post(client, BATCH, {"events": events}).json()

    assert body["accepted"] == 3
    late = dict(UsageEvent.objects.values_list("transaction_id", "is_late"))
    assert late == {"old": True, "yesterday": False, "now": False}


def test_late_cutoff_is_the_start_of_the_previous_utc_day():
    now = datetime(2024, 3, 10, 0, 30, tzinfo=UTC)
    assert late_cutoff(now) == datetime(2024, 3, 9, tzinfo=UTC)


def test_event_without_timestamp_takes_reception_time_and_its_retry_is_a_duplicate(client, setup):
    event = {"transaction_id": "nots", "external_customer_id": "acme", "code": "calls"}
    first = post(client, SINGLE, {"event": event}).json()
    second = post(client, SINGLE, {"event": event}).json()

    assert (first["status"], second["status"]) == ("accepted", "duplicate")
    stored = UsageEvent.objects.get()
    assert abs(stored.occurred_at - stored.received_at) < timedelta(seconds=1)


def test_timestamp_just_inside_the_future_allowance_is_accepted(client, setup):
    ts = int(timezone.now().timestamp()) + 240
    response = post(client, SINGLE, {"event": lago("soon", timestamp=ts)})

    assert response.json()["status"] == "accepted"


# --- quarantine ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("customer", "code", "reason"),
    [
        ("nobody", "calls", "unknown_account"),
        ("acme", "nometer", "unknown_meter"),
        ("acme", "retired", "inactive_meter"),
    ],
)
def test_unattributable_events_are_quarantined_with_their_reason(
    client, setup, customer, code, reason
):
    MeterFactory(code="retired", active=False)
    response = post(client, SINGLE, {"event": lago("q1", code, customer, units=2)})

    assert response.status_code == 200
    assert response.json() == {"status": "quarantined", "transaction_id": "q1", "event_id": None}
    held = QuarantinedEvent.objects.get()
    assert (held.reason, held.status, held.meter_code) == (reason, "pending", code)
    assert held.payload["properties"] == {"units": 2}
    assert not UsageEvent.objects.exists()
    assert held.history.count() == 1


def test_retrying_a_quarantined_event_is_a_duplicate_or_a_conflict(client, setup):
    event = lago("q1", customer="nobody", timestamp=1_700_000_000, n=1)
    post(client, SINGLE, {"event": event})

    same = post(client, SINGLE, {"event": event})
    different = post(client, SINGLE, {"event": event | {"properties": {"n": 2}}})

    assert same.json()["status"] == "duplicate"
    assert different.status_code == 409
    assert QuarantinedEvent.objects.count() == 1


def test_quarantine_keeps_exact_numbers_in_the_payload(client, setup):
    post(
        client,
        SINGLE,
        '{"event": {"transaction_id": "q", "external_customer_id": "nobody", "code": "tokens",'
        ' "timestamp": 1700000000.000001, "properties": {"tokens": 0.30000000000000004}}}',
    )
    with ingest_sql._cursor() as cur:
        cur.execute("SELECT payload::text FROM metering_quarantinedevent")
        payload = exact_json.loads(cur.fetchone()[0])
    assert payload["properties"]["tokens"] == Decimal("0.30000000000000004")
    assert payload["timestamp"] == Decimal("1700000000.000001")


def test_retry_of_a_stored_event_after_its_meter_was_deactivated_is_a_duplicate(client, setup):
    event = lago("t1", timestamp=1_700_000_000)
    post(client, SINGLE, {"event": event})
    Meter.objects.filter(code="calls").update(active=False)

    response = post(client, SINGLE, {"event": event})

    assert response.json()["status"] == "duplicate"
    assert not QuarantinedEvent.objects.exists()


# --- bad input: status and code -----------------------------------------------------------------

FUTURE = "future"


def _bad(**overrides):
    event = {
        "transaction_id": "t",
        "external_customer_id": "acme",
        "code": "tokens",
        "timestamp": 1_700_000_000,
        "properties": {"tokens": 1},
    }
    for key, value in overrides.items():
        if value is None:
            event.pop(key)
        else:
            event[key] = value
    return event


@pytest.mark.parametrize(
    ("event", "field", "code"),
    [
        (_bad(transaction_id=None), "transaction_id", "missing_field"),
        (_bad(external_customer_id=None), "external_customer_id", "missing_field"),
        (_bad(code=None), "code", "missing_field"),
        (_bad(transaction_id=17), "transaction_id", "invalid_type"),
        (_bad(transaction_id="  "), "transaction_id", "blank"),
        (_bad(transaction_id="x" * 256), "transaction_id", "too_long"),
        (_bad(transaction_id="a\x00b"), "transaction_id", "invalid_characters"),
        (_bad(transaction_id="mo:correction:t-1:1"), "transaction_id", "reserved_transaction_id"),
        (_bad(timestamp="yesterday"), "timestamp", "invalid_timestamp"),
        (_bad(timestamp="2024-01-01T00:00:00"), "timestamp", "invalid_timestamp"),
        (_bad(timestamp=True), "timestamp", "invalid_timestamp"),
        (_bad(timestamp=10**20), "timestamp", "invalid_timestamp"),
        (_bad(timestamp=FUTURE), "timestamp", "timestamp_in_future"),
        (_bad(properties=[1, 2]), "properties", "invalid_type"),
        (_bad(properties={"tokens": "a\x00"}), "properties", "invalid_properties"),
        (_bad(properties={"other": 1}), "properties.tokens", "missing_value"),
        (_bad(properties={"tokens": None}), "properties.tokens", "missing_value"),
        (_bad(properties={"tokens": "abc"}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": "NaN"}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": "Infinity"}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": "-inf"}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": "1_000"}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": True}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": {"n": 1}}), "properties.tokens", "invalid_value"),
        (_bad(properties={"tokens": 10**26}), "properties.tokens", "value_out_of_range"),
        (_bad(properties={"tokens": "0.0000000000001"}), "properties.tokens", "value_too_precise"),
        (_bad(code="seats", properties={"user": {"id": 1}}), "properties.user", "invalid_value"),
        (_bad(code="seats", properties={"user": ""}), "properties.user", "missing_value"),
        (_bad(code="seats", properties={"user": "u" * 256}), "properties.user", "value_too_long"),
    ],
)
def test_bad_lago_event_is_a_400_with_its_error_code(client, setup, event, field, code):
    if event.get("timestamp") == FUTURE:
        event["timestamp"] = int(timezone.now().timestamp()) + 301 + 5
    response = post(client, SINGLE, {"event": event})

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == code
    assert body["status"] == "rejected"
    assert {"field": field, "code": code} == {k: body["errors"][0][k] for k in ("field", "code")}
    assert body["message"]
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"specversion": "0.3"}, "specversion", "invalid_specversion"),
        ({"specversion": None}, "specversion", "missing_field"),
        ({"source": None}, "source", "missing_field"),
        ({"subject": None}, "subject", "missing_field"),
        ({"time": 1_700_000_000}, "time", "invalid_timestamp"),
        ({"data": "text"}, "data", "invalid_type"),
        ({"data_base64": "eyJ9"}, "data_base64", "unsupported_data"),
    ],
)
def test_bad_cloudevent_is_a_400_with_its_error_code(client, setup, overrides, field, code):
    event = cloudevent("c1")
    for key, value in overrides.items():
        if value is None:
            event.pop(key)
        else:
            event[key] = value
    response = post(client, SINGLE, event, CE)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["errors"][0]["field"] == field


@override_settings(INGEST_MAX_PROPERTIES_BYTES=64)
def test_oversized_properties_are_rejected(client, setup):
    response = post(client, SINGLE, {"event": _bad(properties={"tokens": 1, "pad": "x" * 80})})

    assert response.status_code == 400
    assert response.json()["code"] == "properties_too_large"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ('{"event": {', "application/json", 400, "malformed_json"),
        ("", "application/json", 400, "malformed_json"),
        (b"\xff\xfe{}", "application/json", 400, "malformed_json"),
        ('{"event": {"properties": {"tokens": NaN}}}', "application/json", 400, "malformed_json"),
        ("[" * 100_000 + "]" * 100_000, "application/json", 400, "malformed_json"),
        ('{"event": {"n": ' + "9" * 5000 + "}}", "application/json", 400, "malformed_json"),
        ('{"evnt": {}}', "application/json", 400, "invalid_body"),
        ('{"event": [1]}', "application/json", 400, "invalid_body"),
        ("[]", CE, 400, "invalid_body"),
        ('{"event": {}}', "text/plain", 415, "unsupported_media_type"),
        ("[]", CE_BATCH, 415, "unsupported_media_type"),
    ],
)
def test_bad_single_request_body_gets_status_and_code(
    client, setup, body, content_type, status, code
):
    response = post(client, SINGLE, body, content_type)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ('{"events": [', "application/json", 400, "malformed_json"),
        ('{"events": {}}', "application/json", 400, "invalid_body"),
        ("[]", "application/json", 400, "invalid_body"),
        ('{"events": []}', CE_BATCH, 400, "invalid_body"),
        ("{}", CE, 415, "unsupported_media_type"),
        ("<xml/>", "application/xml", 415, "unsupported_media_type"),
    ],
)
def test_bad_batch_request_body_gets_status_and_code(
    client, setup, body, content_type, status, code
):
    response = post(client, BATCH, body, content_type)

    assert response.status_code == status
    assert response.json()["code"] == code


@override_settings(INGEST_MAX_BATCH_ITEMS=5)
def test_batch_over_the_item_limit_is_a_413_and_writes_nothing(client, setup):
    events = [lago(f"t{i}") for i in range(5)] + [lago("x", customer="nobody")]
    response = post(client, BATCH, {"events": events})

    assert response.status_code == 413
    assert response.json()["code"] == "batch_too_large"
    assert not UsageEvent.objects.exists()
    assert not QuarantinedEvent.objects.exists()
    assert post(client, BATCH, {"events": events[:5]}).json()["accepted"] == 5


@override_settings(INGEST_MAX_BODY_BYTES=2_000)
def test_body_over_the_size_limit_is_a_413_and_writes_nothing(client, setup):
    events = [lago(f"t{i}", pad="x" * 50) for i in range(30)]
    response = post(client, BATCH, {"events": events})

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert not UsageEvent.objects.exists()


@override_settings(INGEST_MAX_BODY_BYTES=2_000)
def test_declared_content_length_over_the_limit_is_refused_before_reading(client, setup):
    response = client.generic(
        "POST", SINGLE, '{"event": {}}', content_type="application/json", CONTENT_LENGTH="999999"
    )

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


def test_ingest_needs_the_ingest_scope(api_client, setup):
    _key, raw = api_key_for(["read", "manage"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = post(api_client, BATCH, {"events": [lago("t1")]})

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert not UsageEvent.objects.exists()


# --- the service and its SQL, directly ----------------------------------------------------------


def test_events_ingest_is_usable_without_http_and_reports_counts(setup):
    result = events_ingest(
        items=[lago("a"), lago("a"), lago("b", customer="nobody"), {"nonsense": 1}], fmt="lago"
    )

    assert (result.accepted, result.duplicates, result.quarantined, result.rejected) == (1, 1, 1, 1)
    assert result.results[0].event_id == UsageEvent.objects.get().id
    assert result.as_dict()["results"][3]["status"] == "rejected"


def test_events_ingest_refuses_an_unknown_format(setup):
    with pytest.raises(ValueError, match="format"):
        events_ingest(items=[], fmt="csv")  # type: ignore[arg-type]


def test_events_insert_returns_only_the_rows_it_inserted(setup):
    account_id = setup["calls"].id and AccountFactory(external_id="acme").id
    now = timezone.now()

    def row(tid):
        import orjson

        fields = {
            "account_id": account_id,
            "meter_id": setup["calls"].id,
            "transaction_id": tid,
            "source": "",
            "occurred_at": now,
            "value": orjson.Fragment(b"1"),
            "unique_value": "",
            "properties": orjson.Fragment(b"{}"),
            "content_hash_hex": "00" * 32,
            "is_late": False,
            "received_at": None,
        }
        return tuple(fields[name] for name in ingest_sql.EVENT_ROW_FIELDS)

    first = ingest_sql.events_insert(rows=[row("x"), row("y")], received_at=now)
    second = ingest_sql.events_insert(rows=[row("y"), row("z")], received_at=now)

    assert set(first) == {(account_id, "", "x"), (account_id, "", "y")}
    assert set(second) == {(account_id, "", "z")}
    existing = ingest_sql.events_existing(keys=[(account_id, "", "y"), (account_id, "", "nope")])
    assert set(existing) == {(account_id, "", "y")}
    assert existing[(account_id, "", "y")] == (first[(account_id, "", "y")], bytes(32))


# --- more bad input: text that cannot be stored, numbers that cannot be written out ------------


@pytest.mark.parametrize(
    ("raw_event", "field", "code"),
    [
        (
            '{"transaction_id": "\\ud800", "external_customer_id": "acme", "code": "calls"}',
            "transaction_id",
            "invalid_characters",
        ),
        (
            '{"transaction_id": "t", "external_customer_id": "acme", "code": "calls",'
            ' "properties": {"k": "\\udfff"}}',
            "properties",
            "invalid_properties",
        ),
        (
            '{"transaction_id": "t", "external_customer_id": "acme", "code": "calls",'
            ' "properties": {"huge": 1e101}}',
            "properties",
            "invalid_properties",
        ),
        (
            '{"transaction_id": "t", "external_customer_id": "acme", "code": "calls",'
            ' "timestamp": 1e400}',
            "timestamp",
            "invalid_timestamp",
        ),
    ],
)
def test_unstorable_text_and_numbers_are_rejected_not_a_500(client, setup, raw_event, field, code):
    response = post(client, SINGLE, '{"event": ' + raw_event + "}")

    assert response.status_code == 400
    assert (response.json()["code"], response.json()["errors"][0]["field"]) == (code, field)


def test_cloudevent_time_without_offset_is_rejected(client, setup):
    event = cloudevent("c1") | {"time": "2024-01-01T00:00:00"}
    response = post(client, SINGLE, event, CE)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_timestamp"


def test_a_backslash_followed_by_u0000_text_is_not_mistaken_for_nul(client, setup):
    response = post(client, SINGLE, {"event": lago("t1", path="C:\\u0000dir")})

    assert response.json()["status"] == "accepted"
    assert UsageEvent.objects.get().properties == {"path": "C:\\u0000dir"}
