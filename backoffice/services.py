"""Writes of the back office."""

from __future__ import annotations

from datetime import datetime

from django.db import connection

from backoffice.models import TaskRun


def task_run_record(*, task: str, succeeded: bool, at: datetime) -> None:
    """Count one finished run of `task`: a single upsert, safe under concurrent workers."""
    table = TaskRun._meta.db_table
    if succeeded:
        columns, bump = (
            "last_success_at, runs, failures",
            "last_success_at = EXCLUDED.last_success_at, runs = t.runs + 1",
        )
        values = "%s, 1, 0"
    else:
        columns, bump = (
            "last_failure_at, runs, failures",
            "last_failure_at = EXCLUDED.last_failure_at, failures = t.failures + 1",
        )
        values = "%s, 0, 1"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} AS t (task, {columns}) VALUES (%s, {values}) "
            f"ON CONFLICT (task) DO UPDATE SET {bump}",
            [task, at],
        )
