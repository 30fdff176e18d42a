import pytest


@pytest.fixture(autouse=True)
def _no_close_checks_unless_asked(settings):
    """Billing's tests close periods on billing's own rules: the close checks of higher apps
    (BILLING_CLOSE_CHECKS, reconciliation's by default) are tested where those apps are, and
    here through stub checks a test names itself."""
    settings.BILLING_CLOSE_CHECKS = []
