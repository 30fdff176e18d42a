"""`manage.py push_usage`: push new usage to the billing provider now, through the ledger.

manage.py push_usage                                 # the configured provider
manage.py push_usage --provider simulated --faults-seed 7 --drop-rate 0.01 --duplicate-rate 0.01
manage.py push_usage --max-entries 1000

Fault options configure the simulated provider's seeded faults for this and later runs (a new
active SimulatedFaultConfig); `--no-faults` switches them off.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from billing.providers import get_provider
from billing.providers.base import ProviderError
from billing.providers.simulated import simulated_faults_configure
from billing.services.push import usage_push


def _rate(value: str) -> Decimal:
    try:
        rate = Decimal(value)
    except InvalidOperation as exc:
        raise CommandError(f"A rate is a decimal between 0 and 1, not {value!r}.") from exc
    if not Decimal(0) <= rate <= Decimal(1):
        raise CommandError(f"A rate is between 0 and 1, not {value}.")
    return rate


class Command(BaseCommand):
    help = "Push new usage to the billing provider (exactly once, through the push ledger)."

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["simulated", "stripe"], default=None)
        parser.add_argument("--max-entries", type=int, default=None)
        faults = parser.add_argument_group("simulated provider faults")
        faults.add_argument("--faults-seed", type=int, default=None)
        faults.add_argument("--drop-rate", type=_rate, default=Decimal(0))
        faults.add_argument("--duplicate-rate", type=_rate, default=Decimal(0))
        faults.add_argument("--delay-rate", type=_rate, default=Decimal(0))
        faults.add_argument("--delay-seconds", type=int, default=0)
        faults.add_argument("--skew-rate", type=_rate, default=Decimal(0))
        faults.add_argument("--skew-seconds", type=int, default=0)
        faults.add_argument("--no-faults", action="store_true")

    def handle(self, *args, provider, max_entries, faults_seed, no_faults, **options):
        if faults_seed is not None or no_faults:
            config = simulated_faults_configure(
                name="no faults" if no_faults else f"push_usage seed {faults_seed}",
                seed=faults_seed or 0,
                drop_rate=Decimal(0) if no_faults else options["drop_rate"],
                duplicate_rate=Decimal(0) if no_faults else options["duplicate_rate"],
                delay_rate=Decimal(0) if no_faults else options["delay_rate"],
                delay_seconds=0 if no_faults else options["delay_seconds"],
                skew_rate=Decimal(0) if no_faults else options["skew_rate"],
                skew_seconds=0 if no_faults else options["skew_seconds"],
            )
            self.stdout.write(f"Simulated provider faults: {config}.")
        adapter = get_provider(provider)
        show = options["verbosity"] > 0
        try:
            with tqdm(unit="entry", desc=f"push to {adapter.name}", disable=not show) as bar:
                result = usage_push(provider=adapter, max_entries=max_entries, progress=bar.update)
        except ProviderError as exc:
            raise CommandError(f"The push stopped: {exc}") from exc
        if result.busy:
            self.stdout.write("Another push is running; nothing done.")
            return
        self.stdout.write(
            f"Pushed to {result.provider}: {result.events_drained} new event(s) -> "
            f"{result.entries_created} ledger entrie(s); {result.attempted} attempted: "
            f"{result.acknowledged} acknowledged, {result.sent} sent, {result.rejected} rejected, "
            f"{result.retry_later} to retry, {result.failed} failed; {result.too_old} too old, "
            f"{result.superseded} superseded; past the 24 h window: "
            f"{result.stale_acknowledged} confirmed, {result.stale_resent} resent, "
            f"{result.stale_failed} for review; {result.http_calls} HTTP call(s)."
        )
        if result.corrections_waiting:
            self.stdout.write(
                f"{result.corrections_waiting} correction(s) wait for their original's answer."
            )
        if result.halted:
            self.stdout.write(f"Stopped early: {result.halted}")
