"""The demo's cross-app stories (after `demo`, `demo_billing` and `rollup`): see backoffice.demo."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from backoffice.demo import demo_stories_seed


class Command(BaseCommand):
    help = "Seed the demo's near-quota limit, billing hold and credit waiting for approval."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="Run even with DEBUG off.")

    def handle(self, *args, force, **options):
        if not settings.DEBUG and not force:
            raise CommandError("Demo data is for development; run with DEBUG=true or --force.")
        stories = demo_stories_seed()
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo stories: near quota {stories.near_quota or '-'}, "
                f"billing hold {stories.held or '-'}, credit {stories.credit or '-'}."
            )
        )
        for note in stories.notes:
            self.stdout.write(f"  {note}")
