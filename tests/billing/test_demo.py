"""The billing demo puts every demo account on a plan once and seeds provider faults."""

import datetime as dt

import pytest
from django.core.management import call_command

from billing.models import Plan, SimulatedFaultConfig, Subscription
from billing.projection import projected_invoice_build
from metering.models import Account
from metering.services.demo import demo_seed

pytestmark = pytest.mark.django_db


def test_billing_demo_subscribes_each_demo_account_once_and_seeds_faults(settings):
    settings.DEBUG = True
    demo_seed(days=3, accounts=6, end=dt.date(2026, 11, 20))
    call_command("demo_billing", verbosity=0)
    call_command("demo_billing", verbosity=0)

    accounts = Account.objects.filter(metadata__demo=True)
    assert Subscription.objects.count() == accounts.count() == 6
    for sub in Subscription.objects.select_related("account", "plan"):
        assert sub.plan.currency == sub.account.currency
        assert sub.plan.prices.count() == 5
    assert Plan.objects.count() == len({(a.tier, a.currency) for a in accounts})
    faults = SimulatedFaultConfig.objects.get(active=True)
    assert faults.seed == 42 and faults.drop_rate > 0


def test_demo_account_has_a_projected_invoice(settings):
    settings.DEBUG = True
    demo_seed(days=3, accounts=3, end=dt.date(2026, 11, 20))
    call_command("demo_billing", "--no-faults", verbosity=0)
    account = Account.objects.filter(metadata__demo=True).first()
    invoice = projected_invoice_build(account=account)
    assert invoice.currency == account.currency
    assert isinstance(invoice.projected_total_minor, int)
    assert not SimulatedFaultConfig.objects.filter(active=True).exists()
