"""Celery tasks and the periodic schedule synced into django-celery-beat."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from celery.schedules import crontab
from django.core.management import call_command
from django.db import OperationalError, connection
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from metering import tasks
from metering.models import Meter, RollupCheck, RollupInbox
from metering.schedule import SYNCED_DESCRIPTION, schedule_sync
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import (
    assert_rollups_match_python,
    assert_rollups_match_sql,
    event,
    insert,
    utc,
)


@pytest.mark.django_db(transaction=True)
def test_the_drain_task_run_twice_at_once_applies_nothing_twice():
    acct = AccountFactory(timezone="America/New_York")
    spend = MeterFactory(
        code="bytes", aggregation=Meter.Aggregation.SUM, value_property="n", dimensions=["r"]
    )
    events = insert(
        *(
            event(
                acct,
                spend,
                utc(2024, 3, 10, 3) + timedelta(minutes=7 * i),
                f"{i}.25",
                properties={"r": f"x{i % 3}"},
            )
            for i in range(400)
        )
    )
    barrier = threading.Barrier(2)
    outcomes: list[dict] = []
    errors: list[BaseException] = []

    def run_task():
        try:
            barrier.wait()
            # apply() runs the task body in this thread as a worker would (acks_late aside).
            outcomes.append(tasks.rollup_drain.apply().get())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_task) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert len(outcomes) == 2
    # Whichever ran, every event was applied exactly once between them.
    assert sum(o["events"] for o in outcomes) == len(events)
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_tasks_ack_late_and_retry_only_on_transient_database_errors():
    for task in (tasks.rollup_drain, tasks.rollup_self_check):
        assert task.acks_late is True
        assert task.autoretry_for == (OperationalError,)
        assert task.max_retries == 5
        assert task.retry_backoff is True


@pytest.mark.django_db
def test_the_self_check_task_records_a_check():
    check_id = tasks.rollup_self_check.apply(kwargs={"days": 1}).get()

    check = RollupCheck.objects.get(pk=check_id)
    assert check.status == RollupCheck.Status.CLEAN
    assert (check.until - check.since).days == 3


def _synced():
    return {
        t.name: (t.task, t.crontab.minute, t.crontab.hour, str(t.crontab.timezone), t.enabled)
        for t in PeriodicTask.objects.filter(description=SYNCED_DESCRIPTION).select_related(
            "crontab"
        )
    }


@pytest.mark.django_db
def test_schedule_sync_writes_the_code_schedule_idempotently(settings):
    schedule_sync()
    schedule_sync()

    synced = _synced()
    assert set(synced) == set(settings.CELERY_BEAT_SCHEDULE)
    assert synced["rollup-drain"] == ("metering.tasks.rollup_drain", "*", "*", "UTC", True)
    assert synced["rollup-self-check"] == (
        "metering.tasks.rollup_self_check",
        "17",
        "3",
        "UTC",
        True,
    )
    assert PeriodicTask.objects.filter(name="rollup-drain").count() == 1
    assert CrontabSchedule.objects.filter(minute="17", hour="3").count() == 1
    assert PeriodicTask.objects.get(name="rollup-drain").expire_seconds == 55


@pytest.mark.django_db
def test_schedule_sync_disables_entries_removed_from_code_and_restores_edited_ones(settings):
    schedule_sync()
    PeriodicTask.objects.filter(name="rollup-self-check").update(enabled=False)
    settings.CELERY_BEAT_SCHEDULE = {
        "rollup-self-check": {
            "task": "metering.tasks.rollup_self_check",
            "schedule": crontab(minute=17, hour=3),
        }
    }

    result = schedule_sync()

    assert result["synced"] == ["rollup-self-check"]
    assert "rollup-drain" in result["disabled"]
    assert PeriodicTask.objects.get(name="rollup-drain").enabled is False
    assert PeriodicTask.objects.get(name="rollup-self-check").enabled is True


@pytest.mark.django_db
def test_migrate_and_the_sync_schedule_command_sync_the_schedule(settings):
    PeriodicTask.objects.all().delete()

    call_command("migrate", verbosity=0)
    assert (
        set(_synced())
        == set(settings.CELERY_BEAT_SCHEDULE)
        >= {
            "rollup-drain",
            "rollup-self-check",
        }
    )

    out = io.StringIO()
    call_command("sync_schedule", stdout=out)
    assert "rollup-drain" in out.getvalue() and "rollup-self-check" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_drain_task_fans_out_one_task_per_partition(settings):
    from config.celery import app

    settings.ROLLUP_DRAIN_WORKERS = 2
    accounts = [AccountFactory(), AccountFactory()]
    spend = MeterFactory(aggregation=Meter.Aggregation.SUM, value_property="n")
    insert(*(event(a, spend, utc(2024, 3, 10, i), "1.5") for a in accounts for i in range(6)))
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the queued partition tasks run inline
    try:
        outcome = tasks.rollup_drain.apply().get()
    finally:
        app.conf.task_always_eager = previous

    assert outcome == {"partitions_queued": 2}
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    one = tasks.rollup_drain.apply(kwargs={"partition": 1}).get()
    assert one["events"] == 0 and not one["busy"]
    settings.ROLLUP_DRAIN_WORKERS = 1
    stale = tasks.rollup_drain.apply(kwargs={"partition": 1}).get()
    assert stale == {"stale_partition": 1, "partitions": 1}
