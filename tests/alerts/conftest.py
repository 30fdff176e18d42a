import importlib

import pytest


@pytest.fixture(autouse=True)
def _default_rules(request):
    """The default rules come from a data migration; a transactional test elsewhere flushes the
    database (rows from migrations included), so put them back for the tests that follow."""
    if "django_db" not in request.keywords and not request.node.get_closest_marker("django_db"):
        yield
        return
    request.getfixturevalue("transactional_db" if _transactional(request) else "db")
    from django.apps import apps

    from alerts.models import AlertRule

    if not AlertRule.objects.filter(code__startswith="default-").exists():
        migration = importlib.import_module("alerts.migrations.0002_default_rules")
        migration.create(apps, None)
    yield


def _transactional(request) -> bool:
    marker = request.node.get_closest_marker("django_db")
    return bool(marker and (marker.kwargs.get("transaction") or (marker.args and marker.args[0])))
