"""Create an API key and print it once, as the last line (so `| tail -1` captures it)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from metering.models import ApiKey
from metering.services.api_keys import InvalidScopes, api_key_create


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, as the last line, and never stored."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="A label, e.g. 'billing-backend'.")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"Comma-separated, from: {', '.join(ApiKey.Scope.values)}.",
        )

    def handle(self, *args, name: str, scopes: str, **options):
        name = name.strip()
        if not name:
            raise CommandError("--name must not be empty.")
        scope_list = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        try:
            key, raw_key = api_key_create(name=name, scopes=scope_list, actor=None)
        except InvalidScopes as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Created API key {key.name!r} (prefix {key.prefix}, scopes {', '.join(key.scopes)})."
        )
        self.stdout.write("Store it now; it is not shown again:")
        self.stdout.write(raw_key)
