"""A push run in a child process, optionally killed (`os._exit`) right after the platform
answered and before the transaction recording the answers commits: the kill tests of the
platform adapters run it twice (killed, then again) against the same fake server and database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
KILLED_EXIT = 17

CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django
    django.setup()
    from billing.services.push import send as push_send
    from billing.services.push import usage_push

    original = push_send._record_results

    def record_then_die(entries, results, now):
        original(entries, results, now)
        os._exit({killed})  # answered; the transaction recording the answers never commits

    if os.environ.get("KILL") == "1":
        push_send._record_results = record_then_die
    result = usage_push()
    print("acknowledged", result.acknowledged)
    """
)


def run_push_child(*, env: dict[str, str], kill: bool) -> subprocess.CompletedProcess:
    """`usage_push()` in a child on the test database, with `env` (the provider's settings)."""
    settings_dict = connection.settings_dict
    url = (
        f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@"
        f"{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/"
        f"{settings_dict['NAME']}"
    )
    return subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT), killed=KILLED_EXIT)],
        env={**os.environ, "DATABASE_URL": url, "KILL": "1" if kill else "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
