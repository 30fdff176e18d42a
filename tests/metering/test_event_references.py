"""An event always points at an account and a meter that exist: checked once per insert
statement and on delete (migration 0010), with the guarantees of the foreign keys it replaced."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction

from metering.models import Account, Meter, UsageEvent
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert, utc

INSERT = """
INSERT INTO metering_usageevent (account_id, meter_id, transaction_id, source, occurred_at,
    received_at, value, unique_value, properties, content_hash, is_late, kind)
SELECT a, m, 'ref-' || a || '-' || m || '-' || g, '', now(), now(), 1, '', '{}', '\\x00',
       false, 'normal'
FROM (VALUES (%s::bigint, %s::bigint)) v(a, m), generate_series(1, 3) g
"""


def _raw_insert(account_id: int, meter_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(INSERT, [account_id, meter_id])


@pytest.mark.django_db
def test_an_event_for_an_account_or_meter_that_does_not_exist_is_refused():
    account, meter = AccountFactory(), MeterFactory()
    missing = 10**12

    with pytest.raises(IntegrityError, match="account that does not exist"), transaction.atomic():
        _raw_insert(missing, meter.pk)
    with pytest.raises(IntegrityError, match="meter that does not exist"), transaction.atomic():
        _raw_insert(account.pk, missing)

    _raw_insert(account.pk, meter.pk)
    assert UsageEvent.objects.filter(account=account, meter=meter).count() == 3


@pytest.mark.django_db
def test_an_account_or_meter_with_events_cannot_be_deleted_even_below_the_orm():
    account, meter = AccountFactory(), MeterFactory()
    insert(event(account, meter, utc(2024, 1, 1)))
    unused_account, unused_meter = AccountFactory(), MeterFactory()

    with connection.cursor() as cursor:
        for table, pk in (("metering_account", account.pk), ("metering_meter", meter.pk)):
            with pytest.raises(IntegrityError, match="has usage events"), transaction.atomic():
                cursor.execute(f"DELETE FROM {table} WHERE id = %s", [pk])
            with pytest.raises(IntegrityError, match="has usage events"), transaction.atomic():
                cursor.execute(f"UPDATE {table} SET id = id + 1000000 WHERE id = %s", [pk])
        cursor.execute("DELETE FROM metering_account WHERE id = %s", [unused_account.pk])
        cursor.execute("DELETE FROM metering_meter WHERE id = %s", [unused_meter.pk])

    assert Account.objects.filter(pk=account.pk).exists()
    assert Meter.objects.filter(pk=meter.pk).exists()
    assert not Account.objects.filter(pk=unused_account.pk).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first", ["insert", "delete"])
def test_an_account_deleted_while_its_first_events_are_inserted_leaves_no_orphan(first):
    """Whichever transaction goes first, the other one fails: never an event without its
    account (the insert's key-share lock makes the delete wait, and the other way round)."""
    account, meter = AccountFactory(), MeterFactory()
    started, finish = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_open():
        try:
            with transaction.atomic():
                if first == "insert":
                    insert(
                        *(
                            event(account, meter, utc(2024, 1, 1) + timedelta(minutes=i))
                            for i in range(5)
                        )
                    )
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
        with pytest.raises(IntegrityError), transaction.atomic():
            if first == "insert":
                with connection.cursor() as cursor:
                    cursor.execute("DELETE FROM metering_account WHERE id = %s", [account.pk])
            else:
                _raw_insert(account.pk, meter.pk)
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
    else:
        assert not Account.objects.filter(pk=account.pk).exists()
