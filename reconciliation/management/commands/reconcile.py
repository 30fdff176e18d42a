"""`manage.py reconcile`: compare our usage with the billing provider's now.

manage.py reconcile                                   # every account with a period to reconcile
manage.py reconcile --account acme                    # one account (external id), repeatable
manage.py reconcile --period-end-before 2026-12-01    # only periods ending by that local date
manage.py reconcile --no-pull                         # use the provider summaries already pulled
manage.py reconcile --batch 1                         # one recorded run per account

With BILLING_PROVIDER_SECONDARY set, each platform is reconciled in turn (its own runs).
"""

from __future__ import annotations

import time
from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing.providers.base import ProviderError
from metering.models import Account
from reconciliation.selectors import is_read_only_platform
from reconciliation.services import reconciliation_run_all


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"Dates are YYYY-MM-DD, not {value!r}.") from exc


class Command(BaseCommand):
    help = (
        "Reconcile our usage with the billing provider's: every open period and every period "
        "closed in the last 7 days, one recorded run per account; prints progress and a summary."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--account", action="append", dest="accounts", metavar="EXTERNAL_ID", default=None
        )
        parser.add_argument(
            "--period-end-before",
            type=_date,
            default=None,
            help="Only periods whose end (a local date, exclusive) is on or before DATE.",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=200,
            help="Accounts reconciled together, one recorded run each batch (default 200).",
        )
        parser.add_argument(
            "--no-pull",
            action="store_true",
            help="Do not call the provider: use the summaries already pulled.",
        )

    def handle(self, *args, accounts, period_end_before, batch, no_pull, **options):
        if batch < 1:
            raise CommandError("--batch is at least 1.")
        account_ids = None
        if accounts:
            found = dict(
                Account.objects.filter(external_id__in=accounts).values_list("external_id", "pk")
            )
            missing = sorted(set(accounts) - set(found))
            if missing:
                raise CommandError(f"Unknown account(s): {', '.join(missing)}.")
            account_ids = list(found.values())
        started = time.monotonic()

        def progress(done: int, total: int, run) -> None:
            if options["verbosity"] >= 1:
                # A read-only secondary platform's runs follow the primary's: say whose.
                secondary = (
                    f"[{run.provider}, read-only] " if is_read_only_platform(run.provider) else ""
                )
                self.stdout.write(
                    f"{secondary}[{done}/{total} accounts] {run.cells_compared} cell(s), "
                    f"{run.mismatches_opened} opened, {run.mismatches_updated} updated, "
                    f"{run.mismatches_resolved} resolved ({run.duration_ms} ms)"
                )

        try:
            total, _runs = reconciliation_run_all(
                account_ids=account_ids,
                period_end_before=period_end_before,
                pull=not no_pull,
                trigger="command",
                batch=batch,
                progress=progress,
            )
        except ProviderError as exc:
            raise CommandError(f"The billing provider failed: {exc}") from exc
        seconds = time.monotonic() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"Reconciled {total.accounts} account(s), {total.periods} period(s), "
                f"{total.cells} cell(s) in {seconds:.1f} s: {total.opened} mismatch(es) opened, "
                f"{total.updated} updated, {total.resolved} resolved."
            )
        )
