"""Evaluate the alert rules now, or as of a time, synchronously (notifications included)."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from alerts.services import alerts_evaluate_all


def parse_at(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    at = parse_datetime(value)
    if at is None:
        raise CommandError(f"--at {value!r} is not an RFC 3339 time (2024-03-04T12:00:00Z).")
    if at.tzinfo is None:
        raise CommandError("--at needs a UTC offset (for example 2024-03-04T12:00:00Z).")
    return at.astimezone(dt.UTC)


class Command(BaseCommand):
    help = (
        "Evaluate every alert rule for every active account now (or as of --at): opens, "
        "escalates and resolves alerts. 'Today' is each account's local day containing that "
        "time, so far."
    )

    def add_arguments(self, parser):
        parser.add_argument("--at", help="Evaluate as of this time (RFC 3339, with an offset).")

    def handle(self, *args, **options):
        run = alerts_evaluate_all(at=parse_at(options.get("at")))
        self.stdout.write(
            f"Evaluated {run.accounts} accounts: {run.findings} findings, "
            f"{len(run.opened)} opened, {len(run.escalated)} escalated, {run.updated} updated, "
            f"{len(run.resolved)} resolved, {len(run.holds)} billing holds."
        )
