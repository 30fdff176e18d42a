import uuid

import pytest


@pytest.fixture
def api_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(autouse=True)
def _celery_runs_in_place(monkeypatch):
    """A task queued in a test (`.delay()`, `delay_on_commit`) runs in place, as a worker would,
    instead of going to the broker: no test leaves messages in Redis. On-commit callbacks still
    run only where a test executes them (`django_capture_on_commit_callbacks(execute=True)`)."""
    from config.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)


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


@pytest.fixture
def fake(settings):
    """The suite's Stripe-compatible server, with the stripe provider pointed at it."""
    from tests.billing.fake_stripe import FakeStripe

    server = FakeStripe()
    settings.BILLING_PROVIDER = "stripe"
    settings.STRIPE_API_KEY = server.api_key
    settings.STRIPE_API_BASE = server.start()
    yield server
    server.stop()


@pytest.fixture
def orb_fake(settings):
    """The suite's Orb-compatible server (tests/billing/fakes/orb.py), with BILLING_PROVIDER=orb
    pointed at it; grace period 12 hours unless a test sets `orb_fake.grace_seconds` and
    ORB_GRACE_PERIOD_HOURS together."""
    from tests.billing.fakes.orb import FakeOrb

    server = FakeOrb()
    settings.BILLING_PROVIDER = "orb"
    settings.ORB_API_KEY = server.api_key
    settings.ORB_API_BASE = server.start()
    settings.ORB_GRACE_PERIOD_HOURS = 12
    settings.ORB_RETRY_AFTER_MAX = 30
    yield server
    server.stop()


@pytest.fixture
def lago_fake(settings):
    """The suite's Lago-compatible server (tests/billing/fakes/lago.py), with
    BILLING_PROVIDER=lago pointed at it."""
    from tests.billing.fakes.lago import FakeLago

    server = FakeLago()
    settings.BILLING_PROVIDER = "lago"
    settings.LAGO_API_KEY = server.api_key
    settings.LAGO_API_URL = server.start()
    settings.LAGO_RETRY_AFTER_MAX = 30
    yield server
    server.stop()


@pytest.fixture
def metronome_fake(settings):
    """The suite's Metronome-compatible server (tests/billing/fakes/metronome.py), with
    BILLING_PROVIDER=metronome pointed at it."""
    from tests.billing.fakes.metronome import FakeMetronome

    server = FakeMetronome()
    settings.BILLING_PROVIDER = "metronome"
    settings.METRONOME_API_KEY = server.api_key
    settings.METRONOME_API_BASE = server.start()
    settings.METRONOME_RETRY_AFTER_MAX = 30
    yield server
    server.stop()


@pytest.fixture
def amberflo_fake(settings):
    """The suite's Amberflo-compatible server (tests/billing/fakes/amberflo.py), with
    BILLING_PROVIDER=amberflo pointed at it."""
    from tests.billing.fakes.amberflo import FakeAmberflo

    server = FakeAmberflo()
    settings.BILLING_PROVIDER = "amberflo"
    settings.AMBERFLO_API_KEY = server.api_key
    settings.AMBERFLO_BASE_URL = server.start()
    settings.AMBERFLO_RETRY_AFTER_MAX = 30
    yield server
    server.stop()
