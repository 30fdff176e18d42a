"""`manage.py pull_provider`: pull the provider's daily usage summaries and invoices now.

manage.py pull_provider                              # the last 3 UTC days and today
manage.py pull_provider --since 2024-05-01 --until 2024-06-01 --account acme
manage.py pull_provider --no-invoices
"""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from billing.providers import get_provider
from billing.providers.base import ProviderError
from billing.services.pull import provider_pull
from metering.models import Account


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"Dates are YYYY-MM-DD, not {value!r}.") from exc


class Command(BaseCommand):
    help = "Pull the billing provider's usage summaries (UTC days) and invoices."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["simulated", "stripe"], default=None)
        parser.add_argument("--since", type=_date, default=None, help="First UTC day.")
        parser.add_argument("--until", type=_date, default=None, help="UTC day after the last.")
        parser.add_argument(
            "--account", action="append", dest="accounts", metavar="EXTERNAL_ID", default=None
        )
        parser.add_argument("--no-invoices", action="store_true")

    def handle(self, *args, provider, since, until, accounts, no_invoices, **options):
        if since and until and until <= since:
            raise CommandError("--until must be after --since.")
        account_ids = None
        if accounts:
            found = dict(
                Account.objects.filter(external_id__in=accounts).values_list("external_id", "pk")
            )
            missing = sorted(set(accounts) - set(found))
            if missing:
                raise CommandError(f"Unknown account(s): {', '.join(missing)}.")
            account_ids = list(found.values())
        show = options["verbosity"] > 1

        def progress(message: str) -> None:
            if show:
                self.stdout.write(f"  {message}")

        try:
            result = provider_pull(
                provider=get_provider(provider),
                since=since,
                until=until,
                account_ids=account_ids,
                invoices=not no_invoices,
                progress=progress,
            )
        except ProviderError as exc:
            raise CommandError(f"The pull stopped: {exc}") from exc
        self.stdout.write(
            f"Pulled from {result.provider} for UTC days {result.since} to {result.until} "
            f"(exclusive): {result.pairs} account/meter pair(s), {result.summaries_stored} daily "
            f"summarie(s) stored, {result.summaries_zeroed} set to 0; {result.invoices} "
            f"invoice(s) with {result.invoice_lines} line(s); {result.skipped_no_customer} "
            f"pair(s) skipped (nothing at the provider yet); {result.http_calls} HTTP call(s)."
        )
