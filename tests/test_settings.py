"""Settings: production variables pass `check --deploy`; malformed values fail loudly."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    # Only what a production process would have: no test-only switches leak in.
    dropped = {"DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 30 + "-production-like-secret-" + "y" * 30,
    "ALLOWED_HOSTS": "meterops.example.com",
}


def test_check_deploy_is_clean_with_production_variables():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_missing_secret_key_in_production_fails_loudly():
    env = dict(PRODUCTION)
    env.pop("SECRET_KEY")
    result = _manage("check", env_overrides=env)
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def test_malformed_boolean_fails_loudly():
    result = _manage("check", env_overrides={**PRODUCTION, "DEBUG": "maybe"})
    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_database_url_with_wrong_scheme_fails_loudly():
    result = _manage("check", env_overrides={**PRODUCTION, "DATABASE_URL": "mysql://h/db"})
    assert result.returncode != 0
    assert "postgres://" in result.stderr


def test_rollup_drain_workers_out_of_range_fails_loudly():
    result = _manage("check", env_overrides={**PRODUCTION, "ROLLUP_DRAIN_WORKERS": "17"})
    assert result.returncode != 0
    assert "ROLLUP_DRAIN_WORKERS must be 1 to 16" in result.stderr


def test_malformed_rate_limit_fails_loudly():
    result = _manage("check", env_overrides={**PRODUCTION, "API_RATE_INGEST": "lots"})
    assert result.returncode != 0
    assert "API_RATE_INGEST must look like 600/min" in result.stderr


def test_webhooks_go_to_public_https_only_unless_debug_or_told_otherwise():
    # Checked with `manage.py shell -c` so the settings module is read as production reads it.
    code = "from django.conf import settings; print(settings.WEBHOOK_ALLOW_PRIVATE)"

    def allowed(env: dict[str, str]) -> str:
        result = _manage("shell", "--no-imports", "-c", code, env_overrides=env)
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr

    assert allowed(PRODUCTION) == "False"
    assert allowed({**PRODUCTION, "DEBUG": "true"}) == "True"
    assert allowed({**PRODUCTION, "WEBHOOK_ALLOW_PRIVATE": "true"}) == "True"
