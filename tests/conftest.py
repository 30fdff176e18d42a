import uuid

import pytest


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(autouse=True)
def _rate_limit_counters_of_this_test_only(settings):
    """Each test counts its requests in a cache namespace of its own.

    The rate-limit counters live in a Redis that other test runs (and a running dev server) share;
    a fresh key prefix per test means no test trips a limit another test, or run, spent.
    """
    default = settings.CACHES["default"]
    settings.CACHES = {
        **settings.CACHES,
        "default": {**default, "KEY_PREFIX": f"test-{uuid.uuid4().hex}"},
    }
