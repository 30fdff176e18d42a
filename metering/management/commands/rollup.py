"""`manage.py rollup`: drain pending events into the rollups now, with a progress bar.

manage.py rollup                                  # drain the inbox
manage.py rollup --workers 2                      # two drains side by side, by account
manage.py rollup --rebuild --since 2024-01-01     # recompute from raw events
manage.py rollup --rebuild --since 2024-01-01 --account acme --account globex
manage.py rollup --check [--days 3]               # the nightly self-check, now
"""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from metering.models import Account
from metering.rollups_sql import ACCOUNT_SLOTS
from metering.services import rollups


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--since takes a date as YYYY-MM-DD, not {value!r}.") from exc


class Command(BaseCommand):
    help = "Fold pending usage events into the rollups (or rebuild/check them)."

    def add_arguments(self, parser):
        parser.add_argument("--rebuild", action="store_true", help="Recompute from raw events.")
        parser.add_argument("--since", type=_date, help="First day to rebuild (YYYY-MM-DD).")
        parser.add_argument(
            "--account",
            action="append",
            dest="accounts",
            metavar="EXTERNAL_ID",
            help="Limit a rebuild or check to this account (repeatable).",
        )
        parser.add_argument("--check", action="store_true", help="Run the self-check now.")
        parser.add_argument("--days", type=int, default=3, help="Days the self-check covers.")
        parser.add_argument("--batch-size", type=int, default=None, help="Events per batch.")
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="Drains side by side, each on its share of the accounts (default:"
            " ROLLUP_DRAIN_WORKERS).",
        )

    def handle(self, *args, rebuild, since, accounts, check, days, batch_size, workers, **options):
        account_ids = self._account_ids(accounts)
        show = options["verbosity"] > 0
        if rebuild and check:
            raise CommandError("Choose --rebuild or --check, not both.")
        if rebuild:
            if since is None:
                raise CommandError("--rebuild needs --since YYYY-MM-DD.")
            total = len(account_ids) if account_ids is not None else Account.objects.count()
            with tqdm(
                total=total, unit="account", desc="rebuild", disable=not show, file=self._bar_file()
            ) as bar:
                done = rollups.rollups_rebuild(
                    since=since, account_ids=account_ids, progress=bar.update
                )
            self.stdout.write(f"Rebuilt the rollups of {done} accounts from {since}.")
            return
        if check:
            result = rollups.rollup_self_check(days=days, account_ids=account_ids)
            self.stdout.write(
                f"Self-check {result.get_status_display()}: {result.buckets_checked} buckets "
                f"checked, {result.drifted} drifted, {result.repaired} repaired."
            )
            return
        if since is not None or accounts:
            raise CommandError("--since and --account go with --rebuild or --check.")
        workers = workers if workers is not None else settings.ROLLUP_DRAIN_WORKERS
        if not 1 <= workers <= ACCOUNT_SLOTS:
            raise CommandError(f"--workers takes 1 to {ACCOUNT_SLOTS}, not {workers}.")
        pending = rollups.rollup_pending_count()
        with tqdm(
            total=pending, unit="event", desc="rollup", disable=not show, file=self._bar_file()
        ) as bar:
            result = rollups.rollup_drain_parallel(
                workers=workers, batch_size=batch_size, progress=bar.update
            )
        self.stdout.write(
            f"Rolled up {result.events} events in {result.batches} batches"
            f" ({result.recomputed_buckets} buckets recomputed for corrections)."
        )

    def _account_ids(self, external_ids: list[str] | None) -> list[int] | None:
        if not external_ids:
            return None
        found = dict(
            Account.objects.filter(external_id__in=external_ids).values_list("external_id", "pk")
        )
        missing = sorted(set(external_ids) - set(found))
        if missing:
            raise CommandError(f"Unknown account(s): {', '.join(missing)}.")
        return sorted(found.values())

    def _bar_file(self):
        # The progress bar goes to the command's stderr stream itself (OutputWrapper would add a
        # newline to every redraw).
        return getattr(self.stderr, "_out", self.stderr)
