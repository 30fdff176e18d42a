"""Load the demo: accounts, meters, 90 days of usage, staff users and an API key."""

from __future__ import annotations

import time
from datetime import date

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from metering.models import Account
from metering.services.demo import DEMO_PASSWORD, DEMO_USERS, demo_seed


class Command(BaseCommand):
    help = (
        "Seed realistic, reproducible demo data (idempotent). Creates staff users with a known "
        "password, so it refuses to run with DEBUG off unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=90, help="Days of history (default 90).")
        parser.add_argument("--accounts", type=int, default=40, help="Accounts (default 40).")
        parser.add_argument(
            "--if-empty", action="store_true", help="Do nothing if any account exists."
        )
        parser.add_argument(
            "--end-date",
            type=date.fromisoformat,
            default=None,
            help="History ends before this UTC date (YYYY-MM-DD; default today).",
        )
        parser.add_argument(
            "--force", action="store_true", help="Run even with DEBUG off (known passwords!)."
        )

    def handle(self, *args, days, accounts, if_empty, end_date, force, verbosity, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "The demo creates users with a known password; it runs only with DEBUG=true "
                "(or pass --force on a throwaway database)."
            )
        if days < 1 or accounts < 1:
            raise CommandError("--days and --accounts must be at least 1.")
        if if_empty and Account.objects.exists():
            self.stdout.write("Accounts exist already; demo data not loaded (--if-empty).")
            return

        started = time.monotonic()
        bar = tqdm(total=days, unit="day", desc="demo events", disable=verbosity < 1)
        new = seen = 0

        def on_day(day, counts):
            nonlocal new, seen
            new += counts.get("accepted", 0)
            seen += counts.get("duplicate", 0)
            bar.set_postfix(date=day.isoformat(), new=new, already_stored=seen, refresh=False)
            bar.update(1)

        try:
            summary = demo_seed(days=days, accounts=accounts, end=end_date, on_day=on_day)
        finally:
            bar.close()

        events = summary.events
        write = self.stdout.write
        write(self.style.SUCCESS(f"Demo loaded in {time.monotonic() - started:.1f}s."))
        write(
            f"  history:  {summary.start} to {summary.end} (exclusive), {days} days, "
            f"spiking accounts: {', '.join(summary.spiking_accounts) or 'none'}"
        )
        write(
            f"  accounts: {summary.accounts_created} created, {summary.accounts_total} in total; "
            f"meters: {summary.meters_created} created"
        )
        write(
            "  events:   "
            + ", ".join(
                f"{status} {events.get(status, 0)}"
                for status in ("accepted", "duplicate", "quarantined", "conflict", "rejected")
            )
        )
        write(
            f"  users:    {', '.join(name for name, _group in DEMO_USERS)} "
            f"(password {DEMO_PASSWORD!r}); created now: "
            f"{', '.join(summary.users_created) or 'none'}"
        )
        write(f"  API key (ingest, manage, read; local development only): {summary.api_key}")
