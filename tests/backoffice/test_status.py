"""GET /status: rollup lag, push backlog and scheduled tasks against their thresholds."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from backoffice import views
from backoffice.models import TaskRun
from backoffice.status import (
    CRITICAL,
    OK,
    WARNING,
    push_backlog_check,
    rollup_inbox_check,
    schedule_interval_seconds,
    scheduled_tasks_check,
)
from billing.models import PushLedgerEntry
from metering.services.ingest import events_ingest
from metering.tasks import rollup_drain
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

_ids = itertools.count(1)
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _ingest_at(received_at: datetime, tx: str = "tx-1") -> None:
    AccountFactory(external_id="acme")
    MeterFactory(code="api_calls")
    result = events_ingest(
        items=[
            {
                "transaction_id": tx,
                "external_customer_id": "acme",
                "code": "api_calls",
                "timestamp": received_at.isoformat(),
            }
        ],
        fmt="lago",
        now=received_at,
    )
    assert result.results[0].status == "accepted"


def _ledger_entry(status: str, created_at: datetime, n: int = 1) -> None:
    account = AccountFactory(external_id="acme")
    meter = MeterFactory(code="api_calls")
    for i in range(n):
        entry = PushLedgerEntry.objects.create(
            provider="simulated",
            identifier=f"mo-e{next(_ids)}",
            idempotency_key=f"status-test-{i}",
            account=account,
            meter=meter,
            value=Decimal(1),
            timestamp=created_at,
            day=date(2026, 11, 20),
            status=status,
        )
        PushLedgerEntry.objects.filter(pk=entry.pk).update(created_at=created_at)


def _all_tasks_succeeded_at(at: datetime) -> None:
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        TaskRun.objects.update_or_create(
            task=entry["task"], defaults={"last_success_at": at, "runs": 1}
        )


# --- rollup inbox ------------------------------------------------------------------------------


def test_an_empty_rollup_inbox_is_ok():
    check = rollup_inbox_check(T0)

    assert check["status"] == OK
    assert (check["rows"], check["oldest_age_seconds"]) == (0, None)


@pytest.mark.parametrize(
    ("waited", "expected"),
    [
        (timedelta(seconds=60), OK),
        (timedelta(seconds=301), WARNING),
        (timedelta(hours=1), CRITICAL),
    ],
)
def test_the_rollup_inbox_is_judged_by_its_oldest_event(waited, expected):
    _ingest_at(T0, "old")
    _ingest_at(T0 + timedelta(seconds=30), "new")

    check = rollup_inbox_check(T0 + waited)

    assert check["status"] == expected
    assert check["rows"] == 2
    assert check["oldest_age_seconds"] == int(waited.total_seconds())


# --- push backlog ------------------------------------------------------------------------------


def test_unpushed_events_and_pending_entries_make_the_push_backlog_late(settings):
    settings.STATUS_PUSH_LAG_WARNING = 600
    settings.STATUS_PUSH_LAG_CRITICAL = 3600
    _ingest_at(T0)
    rollup_drain()  # rolled up: now in the rolled-up feed, waiting for the push
    _ledger_entry(PushLedgerEntry.Status.PENDING, T0 + timedelta(minutes=5))

    soon = push_backlog_check(T0 + timedelta(minutes=5))
    later = push_backlog_check(T0 + timedelta(minutes=15))
    much_later = push_backlog_check(T0 + timedelta(hours=2))

    assert soon["status"] == OK
    assert (soon["inbox_rows"], soon["pending_entries"]) == (1, 1)
    assert later["status"] == WARNING
    assert later["inbox_oldest_age_seconds"] == 900
    assert later["pending_oldest_age_seconds"] == 600
    assert much_later["status"] == CRITICAL


def test_failed_push_entries_warn_from_the_first_and_page_from_the_threshold(settings):
    settings.STATUS_PUSH_FAILED_WARNING = 1
    settings.STATUS_PUSH_FAILED_CRITICAL = 3
    assert push_backlog_check(T0)["status"] == OK

    _ledger_entry(PushLedgerEntry.Status.FAILED, T0, n=2)
    two = push_backlog_check(T0)
    _ledger_entry(PushLedgerEntry.Status.FAILED, T0, n=1)
    three = push_backlog_check(T0)

    assert (two["status"], two["failed_entries"]) == (WARNING, 2)
    assert (three["status"], three["failed_entries"]) == (CRITICAL, 3)
    # sent and acknowledged entries are not backlog
    _ledger_entry(PushLedgerEntry.Status.ACKNOWLEDGED, T0 - timedelta(days=30), n=1)
    assert push_backlog_check(T0)["pending_entries"] == 0


# --- scheduled tasks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sched", "seconds"),
    [
        (crontab(minute="*"), 60),
        (crontab(minute=40), 3600),
        (crontab(minute=17, hour=3), 86400),
        (timedelta(minutes=5), 300),
        (30.0, 30),
    ],
)
def test_the_interval_of_a_schedule_entry(sched, seconds):
    assert schedule_interval_seconds(sched) == seconds


def test_every_scheduled_task_is_reported_by_its_entry_name():
    _all_tasks_succeeded_at(T0)

    check = scheduled_tasks_check(T0 + timedelta(seconds=10))

    assert set(check["tasks"]) == set(settings.CELERY_BEAT_SCHEDULE)
    assert check["status"] == OK
    drain = check["tasks"]["rollup-drain"]
    assert drain["task"] == "metering.tasks.rollup_drain"
    assert drain["interval_seconds"] == 60
    assert drain["since_success_seconds"] == 10


def test_a_minutely_task_is_late_after_its_thresholds(settings):
    settings.STATUS_TASK_LATE_WARNING = 3
    settings.STATUS_TASK_LATE_CRITICAL = 6
    settings.STATUS_TASK_GRACE_SECONDS = 300
    _all_tasks_succeeded_at(T0)

    def drain_at(seconds):
        return scheduled_tasks_check(T0 + timedelta(seconds=seconds))["tasks"]["rollup-drain"]

    assert drain_at(480)["status"] == OK  # 3 x 60 s + 300 s
    assert drain_at(481)["status"] == WARNING
    assert drain_at(661)["status"] == CRITICAL
    assert (drain_at(481)["warning_after_seconds"], drain_at(481)["critical_after_seconds"]) == (
        480,
        660,
    )
    # a nightly task is not late after an hour
    assert (
        scheduled_tasks_check(T0 + timedelta(hours=1))["tasks"]["rollup-self-check"]["status"] == OK
    )


def test_a_task_never_run_warns_and_one_that_only_ever_failed_is_critical():
    TaskRun.objects.create(task="metering.tasks.rollup_drain", last_failure_at=T0, failures=2)

    tasks = scheduled_tasks_check(T0)["tasks"]

    assert tasks["rollup-drain"]["status"] == CRITICAL
    assert tasks["rollup-drain"]["failures"] == 2
    assert tasks["rollup-self-check"]["status"] == WARNING
    assert tasks["rollup-self-check"]["last_success_at"] is None


def test_a_task_run_is_recorded_through_celerys_signals(monkeypatch):
    rollup_drain.apply()
    rollup_drain.apply()

    run = TaskRun.objects.get(task="metering.tasks.rollup_drain")
    assert run.runs == 2
    assert timezone.now() - run.last_success_at < timedelta(minutes=1)
    assert run.last_failure_at is None

    def broken(**_kwargs):
        raise ValueError("boom")

    monkeypatch.setattr("metering.tasks.rollups.rollup_drain", broken)
    rollup_drain.apply()

    run.refresh_from_db()
    assert (run.runs, run.failures) == (2, 1)
    assert run.last_failure_at >= run.last_success_at


# --- the endpoint ------------------------------------------------------------------------------


def test_status_is_200_ok_without_an_api_key_when_all_is_well(client):
    _all_tasks_succeeded_at(timezone.now())

    response = client.get("/status")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == OK
    assert set(body["checks"]) == {"rollup_inbox", "push_backlog", "scheduled_tasks"}
    assert response["Cache-Control"].startswith("max-age=0")


def test_status_is_200_on_warning_and_503_on_critical(client, settings):
    _all_tasks_succeeded_at(timezone.now())
    _ingest_at(timezone.now() - timedelta(minutes=10))
    settings.STATUS_PUSH_LAG_WARNING = 3600
    settings.STATUS_PUSH_LAG_CRITICAL = 7200

    settings.STATUS_ROLLUP_LAG_WARNING, settings.STATUS_ROLLUP_LAG_CRITICAL = 300, 1800
    warning = client.get("/status")
    settings.STATUS_ROLLUP_LAG_WARNING, settings.STATUS_ROLLUP_LAG_CRITICAL = 60, 300
    critical = client.get("/status")

    assert (warning.status_code, warning.json()["status"]) == (200, WARNING)
    assert (critical.status_code, critical.json()["status"]) == (503, CRITICAL)
    assert critical.json()["checks"]["rollup_inbox"]["status"] == CRITICAL


def test_status_reads_a_fixed_number_of_queries(client, django_assert_max_num_queries):
    _all_tasks_succeeded_at(timezone.now())
    for i in range(5):
        _ingest_at(timezone.now() - timedelta(minutes=i), f"tx-{i}")
    _ledger_entry(PushLedgerEntry.Status.PENDING, timezone.now(), n=3)
    _ledger_entry(PushLedgerEntry.Status.FAILED, timezone.now(), n=3)

    with django_assert_max_num_queries(6):
        response = client.get("/status")

    assert response.status_code == 200


def test_status_is_503_critical_when_the_database_cannot_be_read(client, monkeypatch):
    def down(**_kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(views, "status_get", down)

    response = client.get("/status")

    assert response.status_code == 503
    assert response.json()["status"] == CRITICAL
