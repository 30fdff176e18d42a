"""Put the demo accounts on plans and seed simulated provider faults (after `demo`)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.services.demo import billing_demo_seed


class Command(BaseCommand):
    help = "Create demo plans and subscriptions for the demo accounts, and seed provider faults."

    def add_arguments(self, parser):
        parser.add_argument("--no-faults", action="store_true", help="Leave provider faults off.")
        parser.add_argument("--force", action="store_true", help="Run even with DEBUG off.")

    def handle(self, *args, no_faults, force, **options):
        if not settings.DEBUG and not force:
            raise CommandError("Demo data is for development; run with DEBUG=true or --force.")
        summary = billing_demo_seed(with_faults=not no_faults)
        self.stdout.write(
            self.style.SUCCESS(
                f"Billing demo: {len(summary.plans_created)} plans created, "
                f"{summary.subscriptions_created} subscriptions created, "
                f"faults {'configured' if summary.faults_configured else 'unchanged'}."
            )
        )
