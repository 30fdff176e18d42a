"""The audit log: what a change records, that the database refuses UPDATE and DELETE, that the
hash chain catches an edit or a deleted row made past the trigger, and that concurrent writers
keep one chain."""

from __future__ import annotations

import itertools
import threading
from decimal import Decimal

import pgtrigger
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.db.utils import InternalError, ProgrammingError

from adjustments.audit import GENESIS_HASH, audit_chain_verify, audit_origin
from adjustments.models import AuditEntry
from alerts.services import alert_acknowledge
from metering.models import Account
from metering.services.accounts import account_upsert
from tests.alerts.factories import AlertFactory
from tests.metering.factories import AccountFactory, api_key_for

TRIGGER = "adjustments.AuditEntry:audit_append_only"
TABLE = AuditEntry._meta.db_table


def _entries(**filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(**filters).order_by("seq"))


# --- what is recorded --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_change_records_who_what_why_where_and_the_changed_fields(django_user_model):
    maya = django_user_model.objects.create_user(username="maya", password="x-irrelevant-9")
    with audit_origin("admin", "POST /admin/metering/account/1/change/ from 10.0.0.7"):
        account, _created = account_upsert(
            external_id="acme", name="Acme", timezone="Europe/Berlin", actor=maya, reason="signup"
        )
        account_upsert(
            external_id="acme",
            name="Acme GmbH",
            timezone="Europe/Berlin",
            actor=maya,
            reason="legal name from ticket 42",
        )

    created, changed = _entries(app_label="metering", model="account", object_pk=str(account.pk))
    assert created.action == "created" and changed.action == "changed"
    assert created.before == {} and created.after["name"] == "Acme"
    assert created.after["external_id"] == "acme"
    # Only the changed fields, before and after (updated_at is a stamp, not a change).
    assert changed.before == {"name": "Acme"}
    assert changed.after == {"name": "Acme GmbH"}
    assert (changed.actor_kind, changed.actor_user_id, changed.actor_label) == (
        "user",
        maya.pk,
        "maya",
    )
    assert changed.reason == "legal name from ticket 42"
    assert changed.account_id == account.pk
    assert changed.origin == "admin"
    assert changed.origin_detail.endswith("from 10.0.0.7")
    assert changed.created_at.utcoffset().total_seconds() == 0
    assert changed.history_id == account.history.latest().history_id


@pytest.mark.django_db
def test_a_record_of_an_account_names_the_account_and_keeps_decimals_exact(django_user_model):
    manager = django_user_model.objects.create_user(username="mo", password="x-irrelevant-9")
    alert = AlertFactory(observed=Decimal("10000.000000000001"))
    alert_acknowledge(alert=alert, actor=manager, reason="looking into it")

    entry = _entries(app_label="alerts", model="alert")[-1]
    assert entry.account_id == alert.account_id
    assert entry.before["status"] == "open" and entry.after["status"] == "acknowledged"
    assert entry.reason == "looking into it"
    created = _entries(app_label="alerts", model="alert", action="created")[0]
    assert created.after["observed"] == "10000.000000000001"


@pytest.mark.django_db
def test_history_written_in_bulk_reaches_the_log_by_the_catch_up_once(django_user_model):
    from adjustments.audit import audit_catch_up
    from adjustments.tasks import audit_catch_up_task

    maya = django_user_model.objects.create_user("maya-bulk")
    accounts = [Account(external_id=f"bulk-{n}", name=f"Bulk {n}") for n in range(3)]
    Account.objects.bulk_create(accounts)
    for account in accounts:
        account._history_user = maya
    Account.history.bulk_history_create(accounts, default_change_reason="imported in bulk")
    ids = {str(a.pk) for a in accounts}
    assert not AuditEntry.objects.filter(model="account", object_pk__in=ids).exists()  # no signal

    assert audit_catch_up() == 3
    caught = _entries(model="account", object_pk__in=ids)
    assert [(e.action, e.actor_label, e.reason) for e in caught] == [
        ("created", "maya-bulk", "imported in bulk")
    ] * 3
    assert all("caught up" in e.origin_detail for e in caught)
    assert audit_catch_up_task.apply().get() == 0  # once
    assert audit_chain_verify()[1] is None


@pytest.mark.django_db
def test_a_deleted_record_keeps_its_last_values_and_the_delete_still_works():
    account = AccountFactory(external_id="gone", name="Gone Ltd")
    pk = account.pk
    account.delete()

    assert not Account.objects.filter(pk=pk).exists()
    deleted = _entries(app_label="metering", model="account", object_pk=str(pk))[-1]
    assert deleted.action == "deleted"
    assert deleted.before["name"] == "Gone Ltd" and deleted.after == {}
    assert deleted.actor_kind == "system" and deleted.actor_label == "system"


@pytest.mark.django_db
def test_a_change_through_the_api_names_the_api_key(api_client):
    _key, raw = api_key_for(["manage", "read"], name="provisioning")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api_client.generic(
        "PUT",
        "/api/v1/accounts/viaapi",
        '{"name": "Via API", "timezone": "UTC", "currency": "EUR"}',
        content_type="application/json",
        REMOTE_ADDR="192.0.2.9",
    )
    assert response.status_code == 201

    entry = _entries(app_label="metering", model="account")[-1]
    assert entry.actor_kind == "api_key"
    assert entry.actor_label.startswith("API key provisioning (mo_")
    assert entry.origin == "api"
    assert entry.origin_detail == "PUT /api/v1/accounts/viaapi from 192.0.2.9"
    assert entry.reason.startswith("API key mo_")


@pytest.mark.django_db
def test_secrets_are_redacted_but_their_change_is_recorded():
    key, _raw = api_key_for(["read"], name="reader")
    created = _entries(app_label="metering", model="apikey", object_pk=str(key.pk))[0]
    assert created.after["key_hash"] == "[redacted]"
    assert key.key_hash not in str(created.after)


@pytest.mark.django_db
def test_a_change_made_in_a_celery_task_comes_from_the_task():
    from config.celery import app

    @app.task(name="tests.audit_rename")
    def rename(pk):
        account = Account.objects.get(pk=pk)
        account.name = "Renamed by a task"
        account.save()

    account = AccountFactory()
    rename.delay(account.pk)

    entry = _entries(app_label="metering", model="account")[-1]
    assert (entry.origin, entry.origin_detail) == ("task", "tests.audit_rename")
    assert entry.after == {"name": "Renamed by a task"}


# --- immutability ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_database_refuses_update_and_delete_through_the_orm():
    AccountFactory()
    entry = AuditEntry.objects.order_by("seq").first()

    with pytest.raises((ProgrammingError, InternalError), match="Cannot update or delete"):
        with transaction.atomic():
            AuditEntry.objects.filter(seq=entry.seq).update(reason="nothing happened")
    with pytest.raises((ProgrammingError, InternalError), match="Cannot update or delete"):
        with transaction.atomic():
            AuditEntry.objects.filter(seq=entry.seq).delete()
    entry.refresh_from_db()
    assert entry.reason == ""


@pytest.mark.django_db
@pytest.mark.parametrize(
    "sql",
    [
        f"UPDATE {TABLE} SET reason = 'nothing happened'",
        f"DELETE FROM {TABLE}",
        f"UPDATE {TABLE} SET hash = repeat('0', 64) WHERE seq = 1",
    ],
)
def test_the_database_refuses_update_and_delete_in_raw_sql(sql):
    AccountFactory()
    count = AuditEntry.objects.count()
    with pytest.raises((ProgrammingError, InternalError), match="Cannot update or delete"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    assert AuditEntry.objects.count() == count
    assert audit_chain_verify()[1] is None


# --- the chain ---------------------------------------------------------------------------------


def _three_changes():
    account = AccountFactory(name="One")
    for name in ("Two", "Three"):
        account.name = name
        account.save()
    return account


@pytest.mark.django_db
def test_rows_are_numbered_without_gaps_and_each_hashes_the_previous():
    _three_changes()
    rows = _entries()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))


@pytest.mark.django_db
def test_a_rolled_back_change_leaves_no_gap():
    AccountFactory(name="kept")
    with pytest.raises(RuntimeError), transaction.atomic():
        AccountFactory(name="rolled back")
        raise RuntimeError
    AccountFactory(name="after")
    assert audit_chain_verify() == (AuditEntry.objects.count(), None)


@pytest.mark.django_db
def test_audit_verify_passes_on_a_clean_chain(capsys):
    _three_changes()
    call_command("audit_verify", progress_every=1)
    out = capsys.readouterr().out
    assert "Audit chain intact: 3 rows verified." in out
    assert "2 of 3 rows verified" in out


@pytest.mark.django_db
def test_audit_verify_detects_a_row_edited_past_the_trigger():
    _three_changes()
    # Someone with database access: pgtrigger's own switch, as a superuser could flip it.
    with pgtrigger.ignore(TRIGGER), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET reason = 'looks innocent' WHERE seq = 2")

    with pytest.raises(CommandError, match="row 2 was edited"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_audit_verify_detects_a_deleted_row():
    _three_changes()
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        cursor.execute(f"DELETE FROM {TABLE} WHERE seq = 2")
        cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")

    with pytest.raises(CommandError, match=r"gap before row 3: rows 2\.\.2 are missing"):
        call_command("audit_verify")


@pytest.mark.django_db
def test_audit_verify_detects_a_deleted_row_whose_successors_were_renumbered():
    _three_changes()
    with pgtrigger.ignore(TRIGGER), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE seq = 2")
        cursor.execute(f"UPDATE {TABLE} SET seq = 2 WHERE seq = 3")

    checked, problem = audit_chain_verify()
    assert (checked, problem.seq) == (1, 2)
    assert "does not follow" in problem.message


@pytest.mark.django_db
def test_audit_verify_detects_two_rows_swapped():
    _three_changes()
    with pgtrigger.ignore(TRIGGER), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET seq = -1 WHERE seq = 2")
        cursor.execute(f"UPDATE {TABLE} SET seq = 2 WHERE seq = 3")
        cursor.execute(f"UPDATE {TABLE} SET seq = 3 WHERE seq = -1")

    _checked, problem = audit_chain_verify()
    assert problem is not None and problem.seq == 2


# --- concurrency -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_chain():
    writers, changes = 4, 15
    # A flushed database may hold entries already (the default alert rules come back).
    before = AuditEntry.objects.count()
    accounts = [AccountFactory(name=f"w{i}") for i in range(writers)]
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(account_pk: int) -> None:
        try:
            start.wait()
            for n in range(changes):
                # Two changes per transaction: a writer's rows may interleave with others'.
                with transaction.atomic():
                    account = Account.objects.get(pk=account_pk)
                    account.name = f"{account_pk}-{n}"
                    account.save()
                    account.tier = f"t{n}"
                    account.save()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(a.pk,)) for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    total = AuditEntry.objects.count()
    assert total - before == writers + writers * changes * 2
    assert audit_chain_verify() == (total, None)
