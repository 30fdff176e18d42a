"""Meterops settings: one module, driven by environment variables.

Every variable is listed in the README. Helpers below fail loudly (ImproperlyConfigured) on a
malformed value; safe development defaults apply only while DEBUG is on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"Environment variable {name} is required.")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}.")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}.") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


_RATE = re.compile(r"^\s*\d+\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.IGNORECASE)


def env_rate(name: str, default: str) -> str:
    """A rate limit such as 600/min (per s, min, hour or day), or off."""
    raw = env_str(name, default)
    if raw.strip().lower() in {"off", "none", "unlimited"} or (
        _RATE.match(raw) and int(raw.split("/")[0]) > 0
    ):
        return raw
    raise ImproperlyConfigured(f"{name} must look like 600/min or be 'off', got {raw!r}.")


def database_from_url(url: str) -> dict:
    """Parse postgres://user:pass@host:port/name?sslmode=... into Django's DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL must be a postgres:// URL, got scheme {parsed.scheme!r}."
        )
    name = unquote(parsed.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured("DATABASE_URL must name a database (postgres://host/NAME).")
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    config = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": unquote(parsed.hostname or ""),
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
    }
    return config


DEBUG = env_bool("DEBUG", False)

# A development key only while DEBUG is on; production must set SECRET_KEY.
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me" if DEBUG else None)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # runserver leaves static files to WhiteNoise too (compressed, cached), as in production.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's assets, served from our static files: /api/docs/ works without internet.
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "simple_history",
    # Database triggers declared on models (the audit log refuses UPDATE and DELETE).
    "pgtrigger",
    "notifications",
    "metering",
    "billing",
    "alerts",
    "reconciliation",
    "adjustments",
    "backoffice",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (admin, Swagger UI) from the web process itself: gunicorn serves none.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Says where a change came from (admin or API, path and IP) for the audit log.
    "adjustments.audit.AuditOriginMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/meterops")
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` fills it; WhiteNoise serves it when DEBUG is off.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / ".data" / "static")))
# STATIC_COLLECTED (on unless DEBUG): `manage.py collectstatic` has filled STATIC_ROOT, so
# WhiteNoise serves the hashed, gzip/brotli-compressed copies from there, cached by browsers for
# a year (the name changes with the content). Off, files come straight from the apps, unhashed
# and uncompressed (development and the test suite, which never collect). `make run` collects
# and turns it on, so the local server sends what production sends.
STATIC_COLLECTED = env_bool("STATIC_COLLECTED", not DEBUG)
WHITENOISE_USE_FINDERS = not STATIC_COLLECTED
WHITENOISE_AUTOREFRESH = DEBUG and not STATIC_COLLECTED
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "config.static_storage.CollectedStaticFilesStorage"
        if STATIC_COLLECTED
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Security (production defaults; DEBUG relaxes what local http needs) ---
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# /healthz is probed over plain http by load balancers.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^status$"]

# --- Ingestion limits ---
INGEST_MAX_BATCH_ITEMS = env_int("INGEST_MAX_BATCH_ITEMS", 1000)
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 5 * 1024 * 1024)
INGEST_MAX_PROPERTIES_BYTES = env_int("INGEST_MAX_PROPERTIES_BYTES", 8 * 1024)
INGEST_MAX_FUTURE_SECONDS = 300
# Django's own limit must not cut the body before our 413 does.
DATA_UPLOAD_MAX_MEMORY_SIZE = INGEST_MAX_BODY_BYTES + 1024 * 1024

# --- Cache (rate-limit counters) ---
# Redis; if it is unreachable the API serves requests unthrottled and logs a warning
# (metering.api.throttling). CACHE_KEY_PREFIX separates deployments sharing one Redis.
CACHE_URL = env_str("CACHE_URL", env_str("REDIS_URL", "redis://127.0.0.1:6379/1"))
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "meterops"),
        # An unreachable Redis must cost a request milliseconds, not the OS connect timeout.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

# --- API rate limits, per API key (metering.api.throttling) ---
# The event endpoints count against API_RATE_INGEST; every other call (read and manage) against
# API_RATE_READ. "off" disables one.
API_RATE_INGEST = env_rate("API_RATE_INGEST", "6000/min")
API_RATE_READ = env_rate("API_RATE_READ", "600/min")

# --- REST framework ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["metering.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["metering.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "metering.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Meterops API",
    "DESCRIPTION": "Usage events in, exact usage out.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Two "kind" fields (alerts, adjustments) with different choices: name ours.
    "ENUM_NAME_OVERRIDES": {
        "AdjustmentKindEnum": "adjustments.models.adjustment.Adjustment.Kind",
        "AdjustmentStatusEnum": "adjustments.models.adjustment.Adjustment.Status",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "metering.api.schema.document_rate_limits",
    ],
}

# --- Celery ---
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = BASE_DIR / ".data" / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_queue_dir / "processed"),
        "store_processed": False,
    }

# The periodic schedule lives here, in code; `manage.py sync_schedule` (run by migrate's
# post-migrate hook) writes it into django-celery-beat's tables so it shows in the admin.
CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    # Every minute: fold newly ingested events into the hourly and daily rollups.
    "rollup-drain": {
        "task": "metering.tasks.rollup_drain",
        "schedule": crontab(minute="*"),
        "options": {"expire_seconds": 55},
    },
    # Every night at 03:17 UTC: compare the last 3 days of rollups with the raw events and
    # repair any drift (off the hour, away from other nightly jobs).
    "rollup-self-check": {
        "task": "metering.tasks.rollup_self_check",
        "schedule": crontab(minute=17, hour=3),
        "options": {"expire_seconds": 3600},
    },
    # Every hour at minute 40: snapshot each subscribed account's projected invoice for its own
    # local day. A later run on the same local day rewrites that day's row, so every zone ends
    # up with an end-of-day snapshot.
    "projection-snapshots": {
        "task": "billing.tasks.projection_snapshots_take_daily",
        "schedule": crontab(minute=40),
        "options": {"expire_seconds": 3600},
    },
    # Every hour at minute 7: activate subscriptions whose first day has come, close periods
    # that ended (after BILLING_CLOSE_GRACE_MINUTES, once their usage is rolled up), and open
    # the next ones.
    "billing-periods-roll": {
        "task": "billing.tasks.billing_periods_roll",
        "schedule": crontab(minute=7),
        "options": {"expire_seconds": 3300},
    },
    # Every minute: push new usage to the billing provider through the push ledger.
    "billing-usage-push": {
        "task": "billing.tasks.billing_usage_push",
        "schedule": crontab(minute="*"),
        "options": {"expire_seconds": 55},
    },
    # Every hour at minute 23: pull the provider's daily usage summaries and invoices for
    # reconciliation (off the hour, away from the snapshot and the self-check).
    "billing-provider-pull": {
        "task": "billing.tasks.billing_provider_pull",
        "schedule": crontab(minute=23),
        "options": {"expire_seconds": 3300},
    },
    # Every night at 02:41 UTC: reconcile every account's open periods and those closed in the
    # last 7 days against the billing provider, one task per account (before the 03:17
    # self-check, off the hour).
    "reconciliation-nightly": {
        "task": "reconciliation.tasks.reconcile_all",
        "schedule": crontab(minute=41, hour=2),
        "options": {"expire_seconds": 3600},
    },
    # Every 15 minutes (at :02, :17, :32, :47): evaluate the alert rules, one task per slice.
    "alerts-evaluate": {
        "task": "alerts.tasks.alerts_evaluate",
        "schedule": crontab(minute="2,17,32,47"),
        "options": {"expire_seconds": 840},
    },
    # Every hour at :53: expire adjustment requests nobody decided in the policy's days.
    # Every five minutes: the history rows written in bulk (no signal) into the audit log.
    "adjustments-audit-catch-up": {
        "task": "adjustments.tasks.audit_catch_up_task",
        "schedule": crontab(minute="*/5"),
        "options": {"expire_seconds": 280},
    },
    "adjustments-expire": {
        "task": "adjustments.tasks.adjustments_expire_task",
        "schedule": crontab(minute=53),
        "options": {"expire_seconds": 3000},
    },
    # Every hour at minute 12: tell the CS team of billing holds whose held usage nears the
    # provider's 35-day window (once per hold).
    "alerts-billing-holds-window": {
        "task": "alerts.tasks.alerts_billing_holds_window",
        "schedule": crontab(minute=12),
        "options": {"expire_seconds": 3300},
    },
    # Every minute: send the customer webhooks that are due (new ones are also sent at once,
    # queued when their transaction commits; this catches retries and anything missed).
    "webhook-deliveries-dispatch": {
        "task": "notifications.tasks.webhook_deliveries_dispatch",
        "schedule": crontab(minute="*"),
        "options": {"expire_seconds": 55},
    },
}

# --- Status endpoint thresholds (GET /status, backoffice.status) ---
# Seconds the oldest event may wait for the rollup before the status says warning / critical.
STATUS_ROLLUP_LAG_WARNING = env_int("STATUS_ROLLUP_LAG_WARNING", 300)
STATUS_ROLLUP_LAG_CRITICAL = env_int("STATUS_ROLLUP_LAG_CRITICAL", 1800)
# Seconds the oldest event may wait to enter the push ledger, or a ledger entry to be sent.
STATUS_PUSH_LAG_WARNING = env_int("STATUS_PUSH_LAG_WARNING", 900)
STATUS_PUSH_LAG_CRITICAL = env_int("STATUS_PUSH_LAG_CRITICAL", 3600)
# Failed push ledger entries (each needs a person): warning from this many, critical from that.
STATUS_PUSH_FAILED_WARNING = env_int("STATUS_PUSH_FAILED_WARNING", 1)
STATUS_PUSH_FAILED_CRITICAL = env_int("STATUS_PUSH_FAILED_CRITICAL", 100)
# A scheduled task is late after this many of its intervals (plus the grace) without a success.
STATUS_TASK_LATE_WARNING = env_int("STATUS_TASK_LATE_WARNING", 3)
STATUS_TASK_LATE_CRITICAL = env_int("STATUS_TASK_LATE_CRITICAL", 6)
STATUS_TASK_GRACE_SECONDS = env_int("STATUS_TASK_GRACE_SECONDS", 300)

# --- Rollups ---
# Distinct values of one dimension kept per account, meter and local day; the rest fold into
# "other" (and the page says so).
ROLLUP_MAX_DIMENSION_VALUES = env_int("ROLLUP_MAX_DIMENSION_VALUES", 100)
# Events per rollup transaction: bounds lock time and memory of one drain step.
ROLLUP_BATCH_SIZE = env_int("ROLLUP_BATCH_SIZE", 50_000)
# Drains running side by side, each on its own share of the accounts (one Celery task each per
# minute; `manage.py rollup --workers`). At most 16 (metering.rollups_sql.ACCOUNT_SLOTS).
ROLLUP_DRAIN_WORKERS = env_int("ROLLUP_DRAIN_WORKERS", 1)
if not 1 <= ROLLUP_DRAIN_WORKERS <= 16:
    raise ImproperlyConfigured(f"ROLLUP_DRAIN_WORKERS must be 1 to 16, got {ROLLUP_DRAIN_WORKERS}.")

# --- Billing provider ---
BILLING_PROVIDER = env_str("BILLING_PROVIDER", "simulated")
# A period is closed this long after its end, so events that arrive a little late still count.
BILLING_CLOSE_GRACE_MINUTES = env_int("BILLING_CLOSE_GRACE_MINUTES", 60)
# Checks the hourly roll runs before closing an ended period (dotted paths; each returns the
# reasons to hold it). Comma-separated; set but empty for none.
BILLING_CLOSE_CHECKS = [
    p.strip()
    for p in os.environ.get(
        "BILLING_CLOSE_CHECKS", "reconciliation.services.reconciliation_period_close_check"
    ).split(",")
    if p.strip()
]
BILLING_PROVIDERS = ("simulated", "stripe", "orb", "lago", "metronome", "amberflo")
if BILLING_PROVIDER not in BILLING_PROVIDERS:
    raise ImproperlyConfigured(f"BILLING_PROVIDER must be one of {', '.join(BILLING_PROVIDERS)}.")
# A second platform read side by side during a migration ([9]): never pushed to, only read
# back (its usage and invoices stored under its own name next to the primary's). Empty: none.
BILLING_PROVIDER_SECONDARY = env_str("BILLING_PROVIDER_SECONDARY", "")
if BILLING_PROVIDER_SECONDARY and (
    BILLING_PROVIDER_SECONDARY not in BILLING_PROVIDERS
    or BILLING_PROVIDER_SECONDARY in {BILLING_PROVIDER, "simulated"}
):
    raise ImproperlyConfigured(
        "BILLING_PROVIDER_SECONDARY must be a real platform other than BILLING_PROVIDER."
    )
STRIPE_API_KEY = os.environ.get("STRIPE_API_KEY", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
# The longest Retry-After the push waits for while holding its lock; longer ends the run.
STRIPE_RETRY_AFTER_MAX = float(os.environ.get("STRIPE_RETRY_AFTER_MAX", "30"))
if BILLING_PROVIDER == "stripe" and not STRIPE_API_KEY:
    raise ImproperlyConfigured("BILLING_PROVIDER=stripe needs STRIPE_API_KEY.")
# Orb ([9]): the official `orb-billing` SDK against ORB_API_BASE (Orb's own when empty).
ORB_API_KEY = os.environ.get("ORB_API_KEY", "")
ORB_API_BASE = os.environ.get("ORB_API_BASE", "")
# The ingestion grace period set on the Orb account: older usage is refused by Orb (a
# backfill's business), so the push ledger records it too_old instead of sending it.
ORB_GRACE_PERIOD_HOURS = env_int("ORB_GRACE_PERIOD_HOURS", 12)
ORB_RETRY_AFTER_MAX = float(os.environ.get("ORB_RETRY_AFTER_MAX", "30"))
if BILLING_PROVIDER == "orb" and not ORB_API_KEY:
    raise ImproperlyConfigured("BILLING_PROVIDER=orb needs ORB_API_KEY.")
# Lago ([9]): the official `lago-python-client` SDK against LAGO_API_URL (Lago's own when
# empty; the SDK adds `/api/v1/`).
LAGO_API_KEY = os.environ.get("LAGO_API_KEY", "")
LAGO_API_URL = os.environ.get("LAGO_API_URL", "")
LAGO_RETRY_AFTER_MAX = float(os.environ.get("LAGO_RETRY_AFTER_MAX", "30"))
if BILLING_PROVIDER == "lago" and not LAGO_API_KEY:
    raise ImproperlyConfigured("BILLING_PROVIDER=lago needs LAGO_API_KEY.")
# Metronome ([9]): the official `metronome-sdk` against METRONOME_API_BASE (Metronome's own,
# https://api.metronome.com, when empty).
METRONOME_API_KEY = os.environ.get("METRONOME_API_KEY", "")
METRONOME_API_BASE = os.environ.get("METRONOME_API_BASE", "")
METRONOME_RETRY_AFTER_MAX = float(os.environ.get("METRONOME_RETRY_AFTER_MAX", "30"))
if BILLING_PROVIDER == "metronome" and not METRONOME_API_KEY:
    raise ImproperlyConfigured("BILLING_PROVIDER=metronome needs METRONOME_API_KEY.")
# Amberflo ([9]): its documented REST API (httpx) against AMBERFLO_BASE_URL.
AMBERFLO_API_KEY = os.environ.get("AMBERFLO_API_KEY", "")
AMBERFLO_BASE_URL = env_str("AMBERFLO_BASE_URL", "https://app.amberflo.io")
AMBERFLO_RETRY_AFTER_MAX = float(os.environ.get("AMBERFLO_RETRY_AFTER_MAX", "30"))
if BILLING_PROVIDER == "amberflo" and not AMBERFLO_API_KEY:
    raise ImproperlyConfigured("BILLING_PROVIDER=amberflo needs AMBERFLO_API_KEY.")

# --- Notifications (e-mail, team webhook, customer webhooks) ---
# E-mail goes through Django's backend: the console while DEBUG is on, SMTP otherwise.
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "meterops@localhost")
# The CS team's address: told when a customer's webhook endpoint is disabled, and of an alert
# on an account without a CS owner (metadata.cs_owner_email) when its rule names no address.
# Empty: nobody.
NOTIFY_TEAM_EMAIL = os.environ.get("NOTIFY_TEAM_EMAIL", "")
# The CS team's Slack-compatible incoming webhook ({"text": ...}) for every alert whose rule
# names no team webhook of its own. Empty: none.
NOTIFY_TEAM_WEBHOOK_URL = os.environ.get("NOTIFY_TEAM_WEBHOOK_URL", "").strip()
if NOTIFY_TEAM_WEBHOOK_URL and not NOTIFY_TEAM_WEBHOOK_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured("NOTIFY_TEAM_WEBHOOK_URL must be an http(s) URL.")
# Days after which usage kept back by a billing hold is reported to the CS team (once per
# hold): the provider refuses usage older than 35 days, so the hold must be released before.
BILLING_HOLD_WARN_DAYS = env_int("BILLING_HOLD_WARN_DAYS", 30)
if not 1 <= BILLING_HOLD_WARN_DAYS <= 34:
    raise ImproperlyConfigured(
        f"BILLING_HOLD_WARN_DAYS must be 1 to 34 (the provider's window is 35 days), "
        f"got {BILLING_HOLD_WARN_DAYS}."
    )
# Webhook URLs may be http and may point at private, loopback or link-local addresses: for
# development and tests only. Production sends https to public addresses only.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", DEBUG)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"refused": {"()": "config.log_filters.RefusedRequestWithoutTraceback"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["refused"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The stripe SDK and httpx log every request at INFO; the push ledger and the webhook
    # attempt log keep what matters.
    "loggers": {
        # Django's own console handler (DEBUG only) would print every django.* record a
        # second time next to the root's: one handler, the root's.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}
