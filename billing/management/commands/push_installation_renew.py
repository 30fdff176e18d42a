"""Give this installation a new id at the billing provider (after a physical restore)."""

from django.core.management.base import BaseCommand

from billing.services.installation import installation_renew


class Command(BaseCommand):
    help = (
        "Renew the installation id that prefixes meter event identifiers, so usage recorded "
        "after a restore never reuses an identifier the provider saw in the last 24 hours."
    )

    def handle(self, *args, **options):
        row = installation_renew(reason="push_installation_renew command")
        self.stdout.write(f"installation id: {row.installation_id}")
