"""Accounts and meters: upserts over the API and as services, and quarantine replay."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import override_settings

from metering import models
from metering.models import Account, Meter, QuarantinedEvent, UsageEvent
from metering.services import quarantine
from metering.services.accounts import account_upsert, meter_upsert
from metering.services.ingest import events_ingest
from metering.services.quarantine import quarantine_mark_replayable, quarantine_replay
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def manager(api_client):
    _key, raw = api_key_for(["manage", "read"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


def put(client, path, body):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.generic("PUT", path, data, content_type="application/json")


def event(tid, customer="acme", code="calls", ts=1_700_000_000, **properties):
    return {
        "transaction_id": tid,
        "external_customer_id": customer,
        "code": code,
        "timestamp": ts,
        "properties": properties,
    }


# --- accounts over the API ----------------------------------------------------------------------


def test_put_account_creates_it_with_201(manager):
    response = put(
        manager,
        "/api/v1/accounts/acme",
        {"name": "Acme", "timezone": "Asia/Kolkata", "currency": "EUR", "metadata": {"a": 1}},
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["external_id"] == "acme"
    assert (body["timezone"], body["currency"], body["metadata"]) == (
        "Asia/Kolkata",
        "EUR",
        {"a": 1},
    )
    account = Account.objects.get(external_id="acme")
    assert account.history.get().history_change_reason.startswith("API key mo_")


def test_put_account_again_is_200_and_writes_no_history(manager):
    body = {"name": "Acme", "timezone": "Europe/Berlin"}
    put(manager, "/api/v1/accounts/acme", body)

    response = put(manager, "/api/v1/accounts/acme", body)

    assert response.status_code == 200
    assert Account.objects.count() == 1
    assert Account.objects.get().history.count() == 1


def test_put_account_updates_the_changed_fields(manager):
    put(manager, "/api/v1/accounts/acme", {"name": "Acme", "tier": "gold"})

    response = put(manager, "/api/v1/accounts/acme", {"name": "Acme Inc", "tier": "gold"})

    assert response.status_code == 200
    assert response.json()["name"] == "Acme Inc"
    assert Account.objects.get().history.count() == 2


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "invalid_timezone"),
        ({"currency": "usd"}, "currency", "invalid_currency"),
        ({"currency": "ABC"}, "currency", "invalid_currency"),
        ({"currency": "XAU"}, "currency", "invalid_currency"),
        ({"metadata": ["not", "an", "object"]}, "metadata", "not_a_dict"),
        ({"name": "x" * 256}, "name", "max_length"),
    ],
)
def test_put_invalid_account_is_400_with_field_codes(manager, body, field, code):
    response = put(manager, "/api/v1/accounts/acme", body)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert {"field": field, "code": code} in [
        {"field": e["field"], "code": e["code"]} for e in response.json()["errors"]
    ]
    assert not Account.objects.exists()


def test_put_account_with_a_zone_postgresql_does_not_know_is_400(manager, monkeypatch):
    # No zone on this machine is known to zoneinfo and unknown to PostgreSQL 15, so take one
    # out of the database's (cached) list at the seam: the rollups would fail on it for ever.
    known = models.postgres_timezones()
    monkeypatch.setattr(models, "postgres_timezones", lambda: known - {"America/Ciudad_Juarez"})

    response = put(manager, "/api/v1/accounts/acme", {"timezone": "America/Ciudad_Juarez"})

    assert response.status_code == 400, response.content
    assert {"field": "timezone", "code": "invalid_timezone"} in [
        {"field": e["field"], "code": e["code"]} for e in response.json()["errors"]
    ]
    assert not Account.objects.exists()


def test_account_upsert_refuses_an_unknown_currency_and_a_zone_unknown_to_postgresql(
    monkeypatch,
):
    monkeypatch.setattr(models, "postgres_timezones", lambda: frozenset({"UTC"}))

    with pytest.raises(ValidationError) as caught:
        account_upsert(external_id="acme", timezone="Europe/Berlin", currency="ABC")

    codes = {field: [e.code for e in errors] for field, errors in caught.value.error_dict.items()}
    assert codes == {"timezone": ["invalid_timezone"], "currency": ["invalid_currency"]}


def test_put_account_with_malformed_json_is_400(manager):
    response = put(manager, "/api/v1/accounts/acme", '{"name": ')

    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


def test_get_account(manager, django_assert_max_num_queries):
    AccountFactory(external_id="acme", name="Acme")

    # The three the read took before, plus one for the account's billing hold (alerts, through
    # metering.account_holds).
    with django_assert_max_num_queries(4):
        response = manager.get("/api/v1/accounts/acme")

    assert response.status_code == 200
    assert response.json()["name"] == "Acme"


def test_get_unknown_account_is_404(manager):
    response = manager.get("/api/v1/accounts/nobody")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- meters over the API ------------------------------------------------------------------------


def test_put_meter_creates_then_updates(manager):
    body = {
        "name": "Tokens",
        "aggregation": "sum",
        "value_property": "tokens",
        "dimensions": ["model"],
    }
    created = put(manager, "/api/v1/meters/tokens", body)
    updated = put(manager, "/api/v1/meters/tokens", body | {"unit": "token"})

    assert created.status_code == 201
    assert updated.status_code == 200
    assert updated.json()["unit"] == "token"
    assert Meter.objects.get().dimensions == ["model"]


@pytest.mark.parametrize(
    ("path", "body", "field", "code"),
    [
        (
            "/api/v1/meters/x",
            {"name": "X", "aggregation": "median"},
            "aggregation",
            "invalid_choice",
        ),
        ("/api/v1/meters/x", {"aggregation": "count"}, "name", "required"),
        ("/api/v1/meters/x", {"name": "X", "aggregation": "sum"}, "value_property", "invalid"),
        (
            "/api/v1/meters/Bad%20Code",
            {"name": "X", "aggregation": "count"},
            "code",
            "invalid_code",
        ),
        (
            "/api/v1/meters/x",
            {"name": "X", "aggregation": "count", "dimensions": ["a", "a"]},
            "dimensions",
            "invalid",
        ),
    ],
)
def test_put_invalid_meter_is_400_with_field_codes(manager, path, body, field, code):
    response = put(manager, path, body)

    assert response.status_code == 400
    assert {"field": field, "code": code} in [
        {"field": e["field"], "code": e["code"]} for e in response.json()["errors"]
    ]
    assert not Meter.objects.exists()


def test_meter_aggregation_cannot_change_once_it_has_events(manager):
    AccountFactory(external_id="acme")
    put(manager, "/api/v1/meters/calls", {"name": "Calls", "aggregation": "count"})
    events_ingest(items=[event("t1")], fmt="lago")

    response = put(
        manager,
        "/api/v1/meters/calls",
        {"name": "Calls", "aggregation": "sum", "value_property": "n"},
    )

    assert response.status_code == 400
    assert {e["code"] for e in response.json()["errors"]} == {"immutable"}
    assert Meter.objects.get().aggregation == "count"


def test_meter_aggregation_can_change_while_it_has_no_events(manager):
    put(manager, "/api/v1/meters/calls", {"name": "Calls", "aggregation": "count"})

    response = put(
        manager,
        "/api/v1/meters/calls",
        {"name": "Calls", "aggregation": "max", "value_property": "n"},
    )

    assert response.status_code == 200
    assert response.json()["aggregation"] == "max"


def test_list_meters_in_code_order(manager, django_assert_max_num_queries):
    MeterFactory(code="b_meter")
    MeterFactory(code="a_meter")

    with django_assert_max_num_queries(3):
        response = manager.get("/api/v1/meters")

    assert response.status_code == 200
    assert [m["code"] for m in response.json()] == ["a_meter", "b_meter"]


def test_get_one_meter_and_unknown_meter(manager):
    MeterFactory(code="calls")

    assert manager.get("/api/v1/meters/calls").json()["code"] == "calls"
    assert manager.get("/api/v1/meters/nope").status_code == 404


# --- the services ---------------------------------------------------------------------------------


def test_account_upsert_records_the_actor_in_history():
    user = get_user_model().objects.create_user("staff", password="x")

    account, created = account_upsert(external_id="acme", name="Acme", actor=user)

    assert created
    assert account.history.get().history_user == user


def test_account_upsert_rejects_invalid_values_with_field_errors():
    with pytest.raises(ValidationError) as excinfo:
        account_upsert(external_id="acme", timezone="Nowhere/City", currency="dollars")

    assert set(excinfo.value.message_dict) == {"timezone", "currency"}
    assert not Account.objects.exists()


def test_account_upsert_changes_the_timezone():
    account_upsert(external_id="acme", timezone="UTC")

    _account, created = account_upsert(external_id="acme", timezone="America/New_York")

    assert not created
    assert Account.objects.get().timezone == "America/New_York"


def test_meter_upsert_records_the_actor_and_validates():
    user = get_user_model().objects.create_user("staff", password="x")

    meter, created = meter_upsert(
        code="gb", name="GB", aggregation="max", value_property="gb", actor=user
    )

    assert created and meter.history.get().history_user == user
    with pytest.raises(ValidationError):
        meter_upsert(code="gb2", name="GB", aggregation="max")


# --- quarantine: replayable, replayed -----------------------------------------------------------


def test_creating_the_account_marks_its_events_replayable_and_replays_them_on_commit(
    django_capture_on_commit_callbacks,
):
    MeterFactory(code="calls")
    events_ingest(
        items=[event("t1", "late"), event("t2", "late"), event("t3", "other")], fmt="lago"
    )

    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id="late")

    statuses = dict(QuarantinedEvent.objects.values_list("transaction_id", "status"))
    assert statuses == {"t1": "replayed", "t2": "replayed", "t3": "pending"}
    assert UsageEvent.objects.filter(account__external_id="late").count() == 2
    replayed = QuarantinedEvent.objects.get(transaction_id="t1")
    assert replayed.event.transaction_id == "t1"
    assert replayed.replay_result == "accepted"


def test_creating_the_account_over_the_api_replays_its_events(
    manager, django_capture_on_commit_callbacks
):
    MeterFactory(code="calls")
    events_ingest(items=[event("t1", "late")], fmt="lago")

    with django_capture_on_commit_callbacks(execute=True):
        response = put(manager, "/api/v1/accounts/late", {"name": "Late"})

    assert response.status_code == 201
    assert QuarantinedEvent.objects.get().status == "replayed"
    assert UsageEvent.objects.count() == 1


@pytest.fixture
def queued(monkeypatch):
    """Record what is queued instead of running it: what a request leaves to the worker."""
    from metering import tasks

    calls: list[dict] = []
    monkeypatch.setattr(
        tasks.quarantine_replay_queued, "delay", lambda **kwargs: calls.append(kwargs)
    )
    return calls


def test_creating_the_account_over_the_api_queues_the_replay_instead_of_running_it(
    manager, django_capture_on_commit_callbacks, django_assert_max_num_queries, queued
):
    MeterFactory(code="calls")
    events_ingest(items=[event("t1", "late"), event("t2", "late")], fmt="lago")
    held = sorted(QuarantinedEvent.objects.values_list("id", flat=True))

    # The request does a bounded amount of work whatever the backlog: no replay in it.
    with django_capture_on_commit_callbacks(execute=True), django_assert_max_num_queries(20):
        response = put(manager, "/api/v1/accounts/late", {"name": "Late"})

    assert response.status_code == 201, response.content
    assert (response.json()["replay"], response.json()["replay_queued"]) == ("queued", 2)
    assert queued == [{"ids": held, "actor_id": None}]
    assert set(QuarantinedEvent.objects.values_list("status", flat=True)) == {"replayable"}
    assert not UsageEvent.objects.exists()

    # The worker runs the task (twice, as a redelivery would): stored once.
    from metering.tasks import quarantine_replay_queued

    first = quarantine_replay_queued.apply(kwargs=queued[0]).get()
    second = quarantine_replay_queued.apply(kwargs=queued[0]).get()

    assert (first["replayed"], second["already_replayed"]) == (2, 2)
    assert set(QuarantinedEvent.objects.values_list("status", flat=True)) == {"replayed"}
    assert UsageEvent.objects.count() == 2


def test_creating_a_meter_queues_the_replay_and_an_update_queues_nothing(
    manager, django_capture_on_commit_callbacks, queued
):
    AccountFactory(external_id="late")
    events_ingest(items=[event("t1", "late", "newmeter")], fmt="lago")
    body = {"name": "New", "aggregation": "count"}

    with django_capture_on_commit_callbacks(execute=True):
        created = put(manager, "/api/v1/meters/newmeter", body)
        again = put(manager, "/api/v1/meters/newmeter", body)

    assert (created.json()["replay"], created.json()["replay_queued"]) == ("queued", 1)
    assert (again.json()["replay"], again.json()["replay_queued"]) == ("none", 0)
    assert len(queued) == 1
    assert QuarantinedEvent.objects.get().status == "replayable"


def test_events_waiting_for_the_meter_too_stay_pending_until_it_exists(
    django_capture_on_commit_callbacks,
):
    events_ingest(items=[event("t1", "late", "newmeter")], fmt="lago")

    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id="late")
    assert QuarantinedEvent.objects.get().status == "pending"

    with django_capture_on_commit_callbacks(execute=True):
        meter_upsert(code="newmeter", name="New", aggregation="count")
    assert QuarantinedEvent.objects.get().status == "replayed"


def test_automatic_replay_is_bounded_and_leaves_the_rest_replayable(
    monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(quarantine, "AUTO_REPLAY_LIMIT", 2)
    MeterFactory(code="calls")
    events_ingest(items=[event(f"t{i}", "late") for i in range(5)], fmt="lago")

    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id="late")

    statuses = sorted(QuarantinedEvent.objects.values_list("status", flat=True))
    assert statuses == ["replayable"] * 3 + ["replayed"] * 2
    assert quarantine_replay()["replayed"] == 3
    assert UsageEvent.objects.count() == 5


def test_replay_is_idempotent():
    MeterFactory(code="calls")
    events_ingest(items=[event("t1", "late")], fmt="lago")
    AccountFactory(external_id="late")
    held = QuarantinedEvent.objects.get()

    first = quarantine_replay(ids=[held.id])
    second = quarantine_replay(ids=[held.id])
    third = quarantine_replay()

    assert first["replayed"] == 1 and first["accepted"] == 1
    assert second == {"replayed": 0, "already_replayed": 1}
    assert third == {"replayed": 0}
    assert UsageEvent.objects.count() == 1


def test_replay_leaves_still_unknown_events_pending():
    events_ingest(items=[event("t1", "ghost")], fmt="lago")
    held = QuarantinedEvent.objects.get()
    QuarantinedEvent.objects.filter(pk=held.pk).update(status="replayable")

    outcome = quarantine_replay(ids=[held.id])

    assert outcome["pending"] == 1
    assert QuarantinedEvent.objects.get().status == "pending"


def test_replay_of_an_event_already_stored_with_other_content_fails_as_conflict():
    MeterFactory(code="calls")
    events_ingest(items=[event("t1", "late", n=1)], fmt="lago")
    AccountFactory(external_id="late")
    events_ingest(items=[event("t1", "late", n=2)], fmt="lago")  # sent again, now accepted

    outcome = quarantine_replay()

    held = QuarantinedEvent.objects.get()
    assert outcome["conflict"] == 1
    assert (held.status, held.replay_result) == ("failed", "conflict")
    assert held.event == UsageEvent.objects.get()


def test_replay_of_an_event_already_stored_with_same_content_is_replayed_as_duplicate():
    MeterFactory(code="calls")
    events_ingest(items=[event("t1", "late")], fmt="lago")
    AccountFactory(external_id="late")
    events_ingest(items=[event("t1", "late")], fmt="lago")

    outcome = quarantine_replay()

    assert outcome["duplicate"] == 1
    assert QuarantinedEvent.objects.get().status == "replayed"
    assert UsageEvent.objects.count() == 1


def test_replay_fails_an_event_whose_value_the_meter_refuses():
    events_ingest(items=[event("t1", "late", "tokens", tokens="many")], fmt="lago")
    AccountFactory(external_id="late")
    MeterFactory(code="tokens", aggregation="sum", value_property="tokens")

    outcome = quarantine_replay()

    held = QuarantinedEvent.objects.get()
    assert outcome["rejected"] == 1
    assert (held.status, held.replay_result) == ("failed", "invalid_value")


def test_replay_keeps_exact_values_and_the_original_reception_time():
    items = [
        {
            "transaction_id": "t1",
            "external_customer_id": "late",
            "code": "tokens",
            "timestamp": Decimal("1700000000.5"),
            "properties": {"tokens": Decimal("12345678901234567.123456789012")},
        }
    ]
    events_ingest(items=items, fmt="lago")
    held = QuarantinedEvent.objects.get()
    AccountFactory(external_id="late")
    MeterFactory(code="tokens", aggregation="sum", value_property="tokens")

    quarantine_replay()

    stored = UsageEvent.objects.get()
    assert stored.value == Decimal("12345678901234567.123456789012")
    assert stored.received_at == held.received_at
    assert stored.content_hash == held.content_hash
    assert stored.is_late  # written now, for a day long past


def test_replay_of_a_cloudevent_keeps_its_source():
    ce = {"specversion": "1.0", "id": "c1", "source": "//s", "type": "calls", "subject": "late"}
    events_ingest(items=[ce], fmt="cloudevents")
    AccountFactory(external_id="late")
    MeterFactory(code="calls")

    quarantine_replay()

    assert UsageEvent.objects.get().source == "//s"


def test_mark_replayable_records_history_with_the_actor():
    user = get_user_model().objects.create_user("staff", password="x")
    events_ingest(items=[event("t1", "late")], fmt="lago")
    AccountFactory(external_id="late")
    MeterFactory(code="calls")

    ids = quarantine_mark_replayable(external_customer_id="late", actor=user)

    held = QuarantinedEvent.objects.get()
    assert ids == [held.id]
    assert held.history.first().history_user == user
    assert held.history.first().status == "replayable"


def test_put_account_with_absurdly_deep_json_is_400_not_500(manager):
    response = put(
        manager, "/api/v1/accounts/acme", '{"metadata": ' + "[" * 50_000 + "]" * 50_000 + "}"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "malformed_json"


@override_settings(INGEST_MAX_BODY_BYTES=1_000)
def test_put_account_with_a_body_over_the_limit_is_413(manager):
    response = put(manager, "/api/v1/accounts/acme", {"metadata": {"pad": "x" * 2_000}})

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert not Account.objects.exists()


def test_put_account_as_form_data_is_415(manager):
    response = manager.generic(
        "PUT", "/api/v1/accounts/acme", "name=x", content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
