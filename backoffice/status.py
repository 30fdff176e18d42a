"""Operational status for monitoring: is the pipeline keeping up, do the scheduled tasks run?

Three checks, each ok / warning / critical against thresholds in settings (STATUS_*):

- rollup inbox: events not yet rolled up; its age is that of the oldest (lowest id) entry's
  event, received_at. Normally under a minute: the drain runs every minute.
- push backlog: events rolled up but not yet entered in the push ledger (the rolled-up feed), ledger entries still
  pending, and failed entries (which need a person); accounts whose billing is held aside (their
  usage waits on purpose, and billing holds warn of their own 35-day window).
- scheduled tasks: each entry of settings.CELERY_BEAT_SCHEDULE by its last recorded success
  (backoffice.TaskRun), late after STATUS_TASK_LATE_WARNING / _CRITICAL of its intervals.

The overall status is the worst of them. Everything is read with a fixed number of indexed
queries; row counts stop at COUNT_CAP so a huge backlog costs a bounded scan ("rows_capped").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.schedules import crontab
from celery.schedules import schedule as interval_schedule
from django.conf import settings
from django.db.models import Count, Min, Q, Subquery
from django.utils import timezone

from backoffice.models import TaskRun
from billing.models import PushLedgerEntry
from metering.account_holds import held_account_ids
from metering.models import RolledUpEvent, RollupInbox, UsageEvent

OK, WARNING, CRITICAL = "ok", "warning", "critical"
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
COUNT_CAP = 1_000_000
WEEK_SECONDS = 7 * 24 * 3600


def worst(*levels: str) -> str:
    return max(levels, key=_RANK.__getitem__, default=OK)


def level(value: float | None, *, warning: float, critical: float) -> str:
    """ok up to `warning`, warning above it, critical above `critical`; no value is ok."""
    if value is None:
        return OK
    if value > critical:
        return CRITICAL
    if value > warning:
        return WARNING
    return OK


@dataclass
class Status:
    status: str
    checked_at: datetime
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checked_at": _iso(self.checked_at), "checks": self.checks}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _age(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def _capped_count(queryset) -> tuple[int, bool]:
    rows = queryset.order_by()[:COUNT_CAP].count()
    return rows, rows >= COUNT_CAP


def _oldest_received_at(inbox_model, rows=None) -> datetime | None:
    """received_at of the event behind the inbox's lowest id: two primary-key lookups."""
    rows = inbox_model.objects.all() if rows is None else rows
    lowest = rows.order_by("event_id").values("event_id")[:1]
    return (
        UsageEvent.objects.filter(pk=Subquery(lowest)).values_list("received_at", flat=True).first()
    )


def rollup_inbox_check(now: datetime) -> dict[str, Any]:
    warning, critical = settings.STATUS_ROLLUP_LAG_WARNING, settings.STATUS_ROLLUP_LAG_CRITICAL
    rows, capped = _capped_count(RollupInbox.objects.all())
    age = _age(now, _oldest_received_at(RollupInbox)) if rows else None
    return {
        "status": level(age, warning=warning, critical=critical),
        "rows": rows,
        "rows_capped": capped,
        "oldest_age_seconds": age,
        "warning_after_seconds": warning,
        "critical_after_seconds": critical,
    }


def push_backlog_check(now: datetime) -> dict[str, Any]:
    warning, critical = settings.STATUS_PUSH_LAG_WARNING, settings.STATUS_PUSH_LAG_CRITICAL
    failed_warning = settings.STATUS_PUSH_FAILED_WARNING
    failed_critical = settings.STATUS_PUSH_FAILED_CRITICAL
    # Usage of accounts whose billing is held waits on purpose (alerts' billing holds, with
    # their own 35-day warning): it is not backlog.
    held = sorted(held_account_ids())
    feed = RolledUpEvent.objects.exclude(account_id__in=held)
    rows, capped = _capped_count(feed)
    inbox_age = _age(now, _oldest_received_at(RolledUpEvent, feed)) if rows else None
    pending, failed = PushLedgerEntry.Status.PENDING, PushLedgerEntry.Status.FAILED
    ledger = (
        PushLedgerEntry.objects.filter(status__in=[pending, failed]).exclude(
            status=pending, account_id__in=held
        )
    ).aggregate(
        pending=Count("id", filter=Q(status=pending)),
        pending_oldest=Min("created_at", filter=Q(status=pending)),
        failed=Count("id", filter=Q(status=failed)),
        failed_oldest=Min("created_at", filter=Q(status=failed)),
    )
    pending_age = _age(now, ledger["pending_oldest"])
    lag = max((a for a in (inbox_age, pending_age) if a is not None), default=None)
    return {
        "status": worst(
            level(lag, warning=warning, critical=critical),
            # "at least N failed entries": a threshold of 1 warns on the first one.
            level(ledger["failed"], warning=failed_warning - 1, critical=failed_critical - 1),
        ),
        "inbox_rows": rows,
        "inbox_rows_capped": capped,
        "inbox_oldest_age_seconds": inbox_age,
        "pending_entries": ledger["pending"],
        "pending_oldest_age_seconds": pending_age,
        "failed_entries": ledger["failed"],
        "failed_oldest_age_seconds": _age(now, ledger["failed_oldest"]),
        "warning_after_seconds": warning,
        "critical_after_seconds": critical,
        "failed_warning_at": failed_warning,
        "failed_critical_at": failed_critical,
        "held_accounts": len(held),
    }


def schedule_interval_seconds(sched: Any) -> float:
    """The mean time between two runs of a beat schedule entry.

    A crontab runs |minutes| x |hours| x |weekdays| times a week (day-of-month and month
    restrictions are not counted: none of ours has one); an interval schedule every run_every.
    """
    if isinstance(sched, crontab):
        per_week = len(sched.minute) * len(sched.hour) * len(sched.day_of_week)
        return WEEK_SECONDS / max(per_week, 1)
    if isinstance(sched, interval_schedule):
        return sched.run_every.total_seconds()
    if isinstance(sched, timedelta):
        return sched.total_seconds()
    return float(sched)


def scheduled_tasks_check(now: datetime) -> dict[str, Any]:
    late_warning = settings.STATUS_TASK_LATE_WARNING
    late_critical = settings.STATUS_TASK_LATE_CRITICAL
    grace = settings.STATUS_TASK_GRACE_SECONDS
    schedule = settings.CELERY_BEAT_SCHEDULE
    names = {entry["task"] for entry in schedule.values()}
    runs = {run.task: run for run in TaskRun.objects.filter(task__in=names)}
    tasks: dict[str, dict[str, Any]] = {}
    for entry_name, entry in sorted(schedule.items()):
        interval = schedule_interval_seconds(entry["schedule"])
        warning = int(late_warning * interval + grace)
        critical = int(late_critical * interval + grace)
        run = runs.get(entry["task"])
        since = _age(now, run.last_success_at) if run else None
        if since is not None:
            state = level(since, warning=warning, critical=critical)
        elif run is not None and run.last_failure_at is not None:
            state = CRITICAL  # it has run, and never once succeeded
        else:
            state = WARNING  # no run recorded yet (a fresh install, or beat not running)
        tasks[entry_name] = {
            "status": state,
            "task": entry["task"],
            "interval_seconds": int(interval),
            "last_success_at": _iso(run.last_success_at) if run else None,
            "last_failure_at": _iso(run.last_failure_at) if run else None,
            "since_success_seconds": since,
            "runs": run.runs if run else 0,
            "failures": run.failures if run else 0,
            "warning_after_seconds": warning,
            "critical_after_seconds": critical,
        }
    return {"status": worst(*(t["status"] for t in tasks.values())), "tasks": tasks}


def status_get(*, now: datetime | None = None) -> Status:
    now = now or timezone.now()
    checks = {
        "rollup_inbox": rollup_inbox_check(now),
        "push_backlog": push_backlog_check(now),
        "scheduled_tasks": scheduled_tasks_check(now),
    }
    return Status(
        status=worst(*(c["status"] for c in checks.values())), checked_at=now, checks=checks
    )
