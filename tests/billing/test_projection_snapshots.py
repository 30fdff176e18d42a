"""Daily snapshots of the projection: one row per account, period and local day; idempotent."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import OperationalError
from django.utils import timezone

from billing import tasks
from billing.models import ProjectionSnapshot
from billing.periods import local_date
from billing.services.projection import (
    projection_snapshot_take,
    projection_snapshots_take_all,
)
from config.celery import app
from tests.billing.factories import AccountFactory
from tests.billing.projection_scenarios import (
    D,
    api_calls_per_day,
    api_calls_scenario,
    at,
    count_scenario,
    count_usage,
    sum_usage,
)

pytestmark = pytest.mark.django_db


def test_taking_the_same_days_snapshot_twice_keeps_one_row_with_the_later_numbers():
    now = at(D(2024, 3, 14), 20)
    s = api_calls_scenario(now=now)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 14), api_calls_per_day)

    first = projection_snapshot_take(account=s.account, on_date=D(2024, 3, 14), now=now)
    # More usage arrives the same day; the second run rewrites the day's row.
    sum_usage(s.account, s.meter, D(2024, 3, 14), D(2024, 3, 15), api_calls_per_day)
    later = now + dt.timedelta(hours=2)
    second = projection_snapshot_take(account=s.account, on_date=D(2024, 3, 14), now=later)

    rows = list(ProjectionSnapshot.objects.filter(account=s.account))
    assert len(rows) == 1
    (row,) = rows
    assert first.pk == second.pk == row.pk
    assert row.taken_on == D(2024, 3, 14)
    assert row.computed_at == later
    assert (row.to_date_total_minor, row.projected_total_minor) == (5_000_00, 6_249_00)
    assert row.currency == "USD"
    before = next(line for line in first.lines if line["kind"] == "usage")
    assert before["units_to_date"] == "9800000"
    calls = next(line for line in row.lines if line["kind"] == "usage")
    assert calls["meter"] == "api_calls"
    assert calls["units_to_date"] == "10800000"
    assert calls["forecast_units"] == "23000000"
    assert calls["projected_amount_minor"] == 6_200_00
    assert calls["explanation"].startswith("10.8M API calls so far")


def test_each_day_gets_its_own_snapshot_and_an_earlier_day_is_projected_as_of_its_end():
    now = at(D(2024, 3, 14), 20)
    s = api_calls_scenario(now=now)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), api_calls_per_day)

    projection_snapshot_take(account=s.account, on_date=D(2024, 3, 5), now=now)
    projection_snapshot_take(account=s.account, on_date=D(2024, 3, 14), now=now)

    rows = list(ProjectionSnapshot.objects.filter(account=s.account).order_by("taken_on"))
    assert [r.taken_on for r in rows] == [D(2024, 3, 5), D(2024, 3, 14)]
    # Mar 1-5 is 3.4M calls: $960 of usage, below the $5,000 minimum.
    assert rows[0].to_date_total_minor == 5_000_00
    mar_5_calls = next(line for line in rows[0].lines if line["kind"] == "usage")
    assert mar_5_calls["units_to_date"] == "3400000"
    assert rows[0].period_id == rows[1].period_id


def test_take_all_snapshots_every_subscribed_account_for_its_own_local_day():
    today_utc = timezone.now()
    with_usage = count_scenario(
        started=local_date(today_utc, "Pacific/Auckland") - dt.timedelta(days=3),
        now=today_utc,
        tz="Pacific/Auckland",
    )
    count_usage(
        with_usage.account,
        with_usage.meter,
        local_date(today_utc, "Pacific/Auckland") - dt.timedelta(days=2),
        local_date(today_utc, "Pacific/Auckland"),
        lambda day: 3,
    )
    AccountFactory()  # no subscription: not snapshotted

    run = projection_snapshots_take_all(now=today_utc)
    again = projection_snapshots_take_all(now=today_utc)

    assert (run.taken, run.skipped, run.failed_account_ids) == (1, 0, [])
    assert again.taken == 1
    (row,) = ProjectionSnapshot.objects.all()
    assert row.account_id == with_usage.account.pk
    assert row.taken_on == local_date(today_utc, "Pacific/Auckland")


def test_the_daily_task_fans_out_one_snapshot_task_per_account_and_is_safe_twice(monkeypatch):
    # Eager: .delay() runs the per-account task in place, as a worker would.
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    now = timezone.now()
    s = count_scenario(started=local_date(now, "UTC") - dt.timedelta(days=1), now=now)
    AccountFactory()  # no subscription

    assert tasks.projection_snapshots_take_daily.apply().get() == 1
    assert tasks.projection_snapshots_take_daily.apply().get() == 1

    (row,) = ProjectionSnapshot.objects.all()
    assert row.account_id == s.account.pk
    assert row.taken_on == local_date(now, "UTC")


def test_the_per_account_task_returns_none_without_an_open_period():
    account = AccountFactory()

    assert tasks.projection_snapshot_take.apply(kwargs={"account_id": account.pk}).get() is None
    assert not ProjectionSnapshot.objects.exists()


def test_snapshot_tasks_ack_late_and_retry_only_on_transient_database_errors():
    for task in (tasks.projection_snapshots_take_daily, tasks.projection_snapshot_take):
        assert task.acks_late is True
        assert task.autoretry_for == (OperationalError,)
        assert task.max_retries == 5


def test_the_snapshot_runs_hourly_on_the_beat_schedule(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["projection-snapshots"]

    assert entry["task"] == "billing.tasks.projection_snapshots_take_daily"
    # Hourly, so each zone's last run of its local day leaves an end-of-day snapshot.
    assert (entry["schedule"].hour, entry["schedule"].minute) == (set(range(24)), {40})
    assert entry["task"] in app.tasks
