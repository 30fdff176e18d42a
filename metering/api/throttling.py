"""Per-API-key rate limits, counted in Django's cache (Redis in production).

One counter per key, scope and clock-aligned window (`API_RATE_INGEST` for the event views,
`API_RATE_READ` for everything else: reads and manage calls share it). A fixed window costs one
cache round trip per request on Redis (INCR and EXPIRE pipelined; ADD then INCR on other
backends), where DRF's SimpleRateThrottle keeps every request's timestamp in one cached list:
at 6,000/min that is a 6,000-item list read and rewritten on every ingest call. The price of a
fixed window is that a client can spend two windows' worth across a window boundary; the limit
is there against runaway clients, not for exact billing.

When the cache is unreachable the API fails open: the request is served unthrottled and a
warning is logged, at most once per `CACHE_DOWN_BACKOFF` during which the cache is not tried
again (so an outage costs no connect timeout per request). Losing rate limiting for a while is
better than refusing every customer's usage events because Redis is down.
"""

from __future__ import annotations

import logging
import math
import re
import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from rest_framework.throttling import BaseThrottle

from metering.models import ApiKey

logger = logging.getLogger(__name__)

INGEST = "ingest"
READ = "read"
CACHE_DOWN_BACKOFF = 30.0  # seconds

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$", re.IGNORECASE)

_cache_down_until = 0.0


def parse_rate(name: str, raw: str) -> tuple[int, int] | None:
    """Parse "600/min" into (600, 60) and "off" into None; anything else is a configuration error."""
    if raw.strip().lower() in {"off", "none", "unlimited"}:
        return None
    match = _RATE.match(raw)
    if not match or int(match.group(1)) < 1:
        raise ImproperlyConfigured(
            f"{name} must look like 600/min (a positive count per s, min, hour or day) or "
            f"'off', got {raw!r}."
        )
    return int(match.group(1)), _PERIODS[match.group(2)[0].lower()]


class ApiKeyRateThrottle(BaseThrottle):
    """Limits each API key per scope; a view says which with `throttle_scope` (default read)."""

    def allow_request(self, request, view) -> bool:
        self.wait_seconds = None
        key = request.auth
        if not isinstance(key, ApiKey):
            return True  # unauthenticated requests are refused before they get here
        scope = getattr(view, "throttle_scope", READ)
        setting = "API_RATE_INGEST" if scope == INGEST else "API_RATE_READ"
        rate = parse_rate(setting, getattr(settings, setting))
        if rate is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        count = _window_count(f"ratelimit:{scope}:{key.pk}:{period}:{window}", period)
        if count is None or count <= limit:
            return True
        self.wait_seconds = max(1, math.ceil((window + 1) * period - now))
        return False

    def wait(self):
        return self.wait_seconds


def _redis_count(backend: RedisCache, cache_key: str, timeout: int) -> int:
    """INCR and EXPIRE in one round trip: Django's ADD then INCR take three (INCR checks that
    the key exists first), about 1 ms of every API request here. INCR creates a missing key at
    1; the window is in the key's name, so renewing its expiry on each request only keeps it
    until `timeout` after the window's last request. (Django's Redis backend stores integers as
    plain Redis integers, so INCR and its own `incr` agree on the value.)"""
    key = backend.make_and_validate_key(cache_key)
    # `_cache` is the backend's RedisCacheClient (private, but what its own methods use).
    pipeline = backend._cache.get_client(key, write=True).pipeline(transaction=False)
    pipeline.incr(key)
    pipeline.expire(key, timeout)
    count, _expiry_set = pipeline.execute()
    return count


def _window_count(cache_key: str, period: int) -> int | None:
    """This request's number in its window, or None when the cache cannot be reached."""
    global _cache_down_until
    if time.monotonic() < _cache_down_until:
        return None
    try:
        # The key outlives its window a little, so INCR never meets an expired key mid-window.
        backend = caches["default"]
        if isinstance(backend, RedisCache):
            return _redis_count(backend, cache_key, period + 5)
        backend.add(cache_key, 0, timeout=period + 5)
        try:
            return backend.incr(cache_key)
        except ValueError:  # evicted between ADD and INCR
            backend.add(cache_key, 1, timeout=period + 5)
            return 1
    except Exception as exc:  # any cache failure: serve the request, say so in the log
        _cache_down_until = time.monotonic() + CACHE_DOWN_BACKOFF
        logger.warning(
            "Rate limiting is off for %.0f s: the cache is unreachable (%s: %s).",
            CACHE_DOWN_BACKOFF,
            exc.__class__.__name__,
            exc,
        )
        return None
