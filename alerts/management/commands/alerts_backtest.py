"""Replay the alert rules over past days and print what they would have fired; writes and
notifies nothing."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from alerts.backtest import alerts_backtest


class Command(BaseCommand):
    help = (
        "Print, per day, the alerts the rules would have fired (each day evaluated at its end "
        "in the account's zone). Nothing is written and nobody is notified."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, help="First day (YYYY-MM-DD).")
        parser.add_argument("--until", help="Last day (default: yesterday, UTC).")
        parser.add_argument("--rule", help="Only this rule (its code), even if disabled.")

    def handle(self, *args, **options):
        try:
            since = dt.date.fromisoformat(options["since"])
            until = (
                dt.date.fromisoformat(options["until"])
                if options.get("until")
                else timezone.now().date() - dt.timedelta(days=1)
            )
        except ValueError as exc:
            raise CommandError(f"Dates are YYYY-MM-DD: {exc}") from None
        if until < since:
            raise CommandError("--until is before --since.")
        total = 0
        try:
            for result in alerts_backtest(since=since, until=until, rule_code=options.get("rule")):
                self.stdout.write(f"{result.day.isoformat()}: {len(result.findings)} alerts")
                for f in result.findings:
                    level = "critical" if f.level == 2 else "warning"
                    meter = f.meter.code if f.meter else "-"
                    self.stdout.write(
                        f"  {f.rule.code} {f.rule.kind} {level} {f.account.external_id} {meter}: "
                        f"{f.message}"
                    )
                total += len(result.findings)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{total} alerts over {(until - since).days + 1} days; none sent.")
