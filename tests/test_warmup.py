"""config.warmup: a web process loads at start what its first request would have loaded.

Run in a fresh interpreter, as a gunicorn worker imports config.wsgi: before the warm-up the
first ingestion request of each worker imported the Redis client library (about 0.7 s of CPU)
and the URL configuration, and bench/ingest.py counted it in the ingest rate.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json, sys
import config.wsgi
from django.core.cache import caches
print(json.dumps({
    "redis": "redis" in sys.modules,
    "views": "metering.api.views" in sys.modules and "billing.api.views" in sys.modules,
    "client": "_cache" in vars(caches["default"]),
    "frozen": gc.get_freeze_count(),
}))
"""


def test_importing_the_wsgi_module_loads_views_and_cache_client_and_freezes_them():
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE"}}
    env.update(
        {
            "DEBUG": "false",
            "SECRET_KEY": "x" * 60,
            "ALLOWED_HOSTS": "example.com",
            # Unreachable on purpose: warming up must not connect anywhere.
            "CACHE_URL": "redis://127.0.0.1:1/0",
            "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert loaded["redis"] and loaded["views"] and loaded["client"]
    assert loaded["frozen"] > 10_000  # the modules, classes and settings loaded at start
