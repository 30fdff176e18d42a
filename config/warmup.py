"""Work a web process does once at start, before its first request, rather than during it.

Measured under gunicorn with bench/ingest.py (3 workers, 1,000-event batches): each worker's
first API request imported the Redis client library (about 0.7 s of CPU here, for the rate
limiter's cache) and the URL configuration with every view module, so the first batch a
worker took waited that long, and the load it arrived in paid for it.

`warm_up` does that work at import of the WSGI module (every gunicorn worker imports it before
it accepts a connection; nothing connects to Redis or PostgreSQL here), then freezes the
garbage collector's view of everything loaded so far: the modules, classes and settings live as
long as the process, and a full collection no longer walks them each time a request's
allocations trigger one (`gc.freeze`, as the Python docs suggest for a server's startup).
"""

from __future__ import annotations

import gc

from django.core.cache import caches
from django.urls import get_resolver


def warm_up() -> None:
    """Load the URL configuration and the cache client; then freeze what is loaded."""
    get_resolver().url_patterns  # imports every view module  # noqa: B018
    for alias in caches:
        cache = caches[alias]
        # RedisCache builds its client (importing `redis`) lazily, on first use.
        getattr(cache, "_cache", None)
    gc.collect()
    gc.freeze()
