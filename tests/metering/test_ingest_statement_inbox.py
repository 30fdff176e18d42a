"""The API's insert statement writes the rollup inbox and checks references itself (migration
0011, metering.ingest_sql.INSERT_EVENTS): one inbox row per new event, none for a duplicate,
a missing account or meter still refused, and every other writer keeps the triggers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from psycopg import errors as pg_errors

from metering import ingest_sql
from metering.models import Account, Meter, RollupInbox, UsageEvent
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for
from tests.metering.rollup_support import event, insert, utc

BATCH = "/api/v1/events/batch"


@pytest.fixture
def client(api_client):
    _key, raw = api_key_for(["ingest"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return api_client


def _post(client, events: list[dict]):
    response = client.generic(
        "POST", BATCH, json.dumps({"events": events}), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    return [item["status"] for item in response.json()["results"]]


_AN_HOUR_AGO = int(timezone.now().timestamp()) - 3600  # one time, so a resend is a duplicate


def _lago(tid: str, customer: str, code: str = "calls") -> dict:
    return {
        "transaction_id": tid,
        "external_customer_id": customer,
        "code": code,
        "timestamp": _AN_HOUR_AGO,
    }


def _inbox() -> list[tuple[int, int]]:
    return sorted(RollupInbox.objects.values_list("event_id", "account_id"))


def _setting() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('meterops.inbox_written', true)")
        return cursor.fetchone()[0]


def _row(account_id: int, meter_id: int, tid: str) -> tuple:
    # EVENT_ROW_FIELDS order
    return (account_id, meter_id, tid, "", "2024-01-01T00:00:00+00:00", None, "", {}, "00", False)


@pytest.mark.django_db
def test_the_api_writes_one_inbox_row_per_new_event_and_none_for_duplicates(client):
    acme, globex = AccountFactory(external_id="acme"), AccountFactory(external_id="globex")
    MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)

    first = [_lago("a", "acme"), _lago("b", "globex"), _lago("a", "acme"), _lago("c", "acme")]
    assert _post(client, first) == ["accepted", "accepted", "duplicate", "accepted"]
    stored = sorted(UsageEvent.objects.values_list("id", "account_id"))
    assert len(stored) == 3
    assert {account for _id, account in stored} == {acme.pk, globex.pk}
    assert _inbox() == stored  # exactly one row each, with the event's account

    # A replay, and a batch mixing one new event with repeats: only the new one is queued.
    assert _post(client, first) == ["duplicate"] * 4
    assert _post(client, [_lago("b", "globex"), _lago("d", "globex")]) == [
        "duplicate",
        "accepted",
    ]
    stored = sorted(UsageEvent.objects.values_list("id", "account_id"))
    assert len(stored) == 4
    assert _inbox() == stored
    assert _setting() == "off"  # nothing after the statement is exempted from the triggers


@pytest.mark.django_db
def test_after_the_api_statement_other_writers_still_get_the_triggers(client):
    account = AccountFactory(external_id="acme")
    meter = MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)
    with transaction.atomic():  # the same transaction as the API's statement
        assert _post(client, [_lago("api-1", "acme")]) == ["accepted"]
        orm = insert(event(account, meter, utc(2024, 1, 1), transaction_id="orm-1"))[0]
        assert RollupInbox.objects.filter(event_id=orm.pk, account_id=account.pk).exists()
        with pytest.raises(IntegrityError, match="account that does not exist"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO metering_usageevent (account_id, meter_id, transaction_id,"
                    " source, occurred_at, received_at, value, unique_value, properties,"
                    " content_hash, is_late, kind) VALUES (%s, %s, 'raw', '', now(), now(),"
                    " 1, '', '{}', '\\x00', false, 'normal')",
                    [10**12, meter.pk],
                )
    assert RollupInbox.objects.count() == UsageEvent.objects.count() == 2


@pytest.mark.django_db
def test_the_statement_refuses_a_missing_account_or_meter_and_writes_nothing():
    account, meter = AccountFactory(), MeterFactory()
    missing = 10**12
    received = datetime(2024, 1, 2, tzinfo=UTC)

    for rows, message in (
        ([_row(account.pk, meter.pk, "ok"), _row(missing, meter.pk, "x")], "account"),
        ([_row(account.pk, meter.pk, "ok"), _row(account.pk, missing, "y")], "meter"),
    ):
        with pytest.raises(pg_errors.ForeignKeyViolation, match=f"{message} that does not"):
            with transaction.atomic():
                ingest_sql.events_insert(rows=rows, received_at=received)
        assert _setting() in (None, "", "off")
    assert not UsageEvent.objects.exists()
    assert not RollupInbox.objects.exists()

    inserted = ingest_sql.events_insert(
        rows=[_row(account.pk, meter.pk, "ok")], received_at=received
    )
    assert _inbox() == [(inserted[(account.pk, "", "ok")], account.pk)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first", ["insert", "delete"])
def test_an_account_deleted_while_the_api_statement_inserts_leaves_no_orphan(first):
    """As test_event_references' race, through the API's statement: its key-share lock makes a
    delete wait and then fail, and a delete that got there first makes the insert fail."""
    account, meter = AccountFactory(), MeterFactory()
    received = timezone.now()
    started, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_open():
        try:
            with transaction.atomic():
                if first == "insert":
                    rows = [_row(account.pk, meter.pk, f"t{i}") for i in range(5)]
                    assert len(ingest_sql.events_insert(rows=rows, received_at=received)) == 5
                else:
                    with connection.cursor() as cursor:
                        cursor.execute("DELETE FROM metering_account WHERE id = %s", [account.pk])
                started.set()
                assert finish.wait(30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=hold_open)
    thread.start()
    assert started.wait(30)
    timer = threading.Timer(1.0, finish.set)  # let the second statement block, then commit
    timer.start()
    try:
        if first == "insert":
            with pytest.raises(IntegrityError, match="has usage events"), transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("DELETE FROM metering_account WHERE id = %s", [account.pk])
        else:
            with pytest.raises(pg_errors.ForeignKeyViolation), transaction.atomic():
                ingest_sql.events_insert(
                    rows=[_row(account.pk, meter.pk, "late")],
                    received_at=received + timedelta(seconds=1),
                )
    finally:
        finish.set()
        timer.cancel()
        thread.join(30)
    assert not errors

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM metering_usageevent e"
            " WHERE NOT EXISTS (SELECT 1 FROM metering_account a WHERE a.id = e.account_id)"
        )
        assert cursor.fetchone()[0] == 0
    if first == "insert":
        assert UsageEvent.objects.filter(account_id=account.pk).count() == 5
        assert RollupInbox.objects.filter(account_id=account.pk).count() == 5
    else:
        assert not Account.objects.filter(pk=account.pk).exists()
        assert not UsageEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_statement_outside_a_transaction_still_writes_one_inbox_row_and_refuses_all():
    """In autocommit the transaction-local setting must still cover the insert (no second inbox
    row from the trigger), and a refused statement must leave nothing committed."""
    account, meter = AccountFactory(), MeterFactory()
    received = timezone.now()
    with pytest.raises(pg_errors.ForeignKeyViolation, match="account that does not exist"):
        ingest_sql.events_insert(
            rows=[_row(account.pk, meter.pk, "a"), _row(10**12, meter.pk, "b")],
            received_at=received,
        )
    assert not UsageEvent.objects.exists()

    inserted = ingest_sql.events_insert(
        rows=[_row(account.pk, meter.pk, "a")], received_at=received
    )
    assert _inbox() == [(inserted[(account.pk, "", "a")], account.pk)]
    assert _setting() in (None, "", "off")


# --- new batches insert without ON CONFLICT (ingest_sql.INSERT_NEW_EVENTS) -----------------------


@pytest.fixture
def inserts(monkeypatch) -> list[tuple[bool, int]]:
    """(new_only, rows) of every events_insert call, the real insert still doing the work."""
    calls: list[tuple[bool, int]] = []
    real = ingest_sql.events_insert

    def recording(*, rows, received_at, new_only=False):
        calls.append((new_only, len(rows)))
        return real(rows=rows, received_at=received_at, new_only=new_only)

    monkeypatch.setattr(ingest_sql, "events_insert", recording)
    return calls


@pytest.mark.django_db
def test_a_new_batch_is_one_plain_insert_and_a_batch_sent_again_goes_straight_to_the_skip(
    client, inserts
):
    AccountFactory(external_id="acme")
    MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)
    batch = [_lago(f"t{i}", "acme") for i in range(5)]

    assert _post(client, batch) == ["accepted"] * 5
    assert inserts == [(True, 5)]

    # Its first, middle and last keys are stored: no insert that would fail is tried.
    assert _post(client, batch) == ["duplicate"] * 5
    assert inserts == [(True, 5), (False, 5)]
    assert UsageEvent.objects.count() == 5
    assert _inbox() == sorted(UsageEvent.objects.values_list("id", "account_id"))


@pytest.mark.django_db
def test_a_stored_event_the_probe_misses_fails_the_plain_insert_and_the_batch_runs_again(
    client, inserts
):
    AccountFactory(external_id="acme")
    MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)
    assert _post(client, [_lago("t2", "acme"), _lago("t3", "acme")]) == ["accepted"] * 2
    stored_before = set(UsageEvent.objects.values_list("id", flat=True))

    # Sorted keys t1, t2, t4, t5, t6: the probe reads t1, t4 and t6, all new; t2 is stored.
    batch = [_lago(f"t{i}", "acme") for i in (1, 2, 4, 5, 6)]
    assert _post(client, batch) == ["accepted", "duplicate", "accepted", "accepted", "accepted"]
    assert inserts[1:] == [(True, 5), (False, 5)]  # the plain insert failed, then the skip

    new = UsageEvent.objects.exclude(id__in=stored_before)
    assert sorted(new.values_list("transaction_id", flat=True)) == ["t1", "t4", "t5", "t6"]
    # Nothing of the rolled-back first run is left: one inbox row per stored event.
    assert _inbox() == sorted(UsageEvent.objects.values_list("id", "account_id"))
    assert UsageEvent.objects.count() == 6


@pytest.mark.django_db
@pytest.mark.parametrize("accounts", [500, 20_000])
def test_the_account_lookup_hashes_or_probes_the_ids_never_tests_each_row_against_a_list(
    accounts,
):
    Account.objects.bulk_create(
        Account(external_id=f"cust_{i:05d}", name=f"Customer {i}") for i in range(accounts)
    )
    ids = [f"cust_{i:05d}" for i in range(0, accounts, max(1, accounts // 300))]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE metering_account")
        sql = ingest_sql.ACCOUNTS_BY_EXTERNAL_ID.replace("%s", "%s::text")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", [json.dumps(ids)])
        plan = json.dumps(cursor.fetchone()[0])

    assert "ANY" not in plan  # a filter testing each account against the whole array
    assert ("Hash" in plan) or ("Index" in plan)
    assert ingest_sql.accounts_by_external_id(external_ids=[*ids[:2], "nobody"]) == {
        external_id: Account.objects.get(external_id=external_id).pk for external_id in ids[:2]
    }
