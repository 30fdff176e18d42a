"""Adjustments reaching Stripe (the suite's fake Stripe server, driven by the real SDK):
balance transactions on an open period, credit notes on an invoiced one, idempotency keys
derived from the adjustment, and a crash between Stripe's answer and our commit."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from django.db import connection
from django.utils import timezone

from adjustments.models import Adjustment
from adjustments.services import (
    Actor,
    adjustment_apply,
    adjustment_approve,
    adjustment_idempotency_key,
    adjustment_request,
)
from billing.models import ProviderInvoice
from billing.services.periods import billing_period_close
from tests.adjustments.support import role_user, scenario

S = Adjustment.Status
ROOT = Path(__file__).resolve().parents[2]


def _form(call: dict) -> dict:
    return dict(parse_qsl(call["body"].decode()))


@pytest.fixture
def support(django_user_model):
    return Actor(user=role_user(django_user_model, "Support", "sue"))


@pytest.fixture
def manager(django_user_model):
    return Actor(user=role_user(django_user_model, "Manager", "max"))


@pytest.mark.django_db
def test_an_open_period_credit_is_a_customer_balance_transaction_with_our_key(fake, support):
    s = scenario(per_day=300)
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=2500,
        reason_code="outage_sla",
        note="Outage on the 3rd",
        ticket="ZD-9",
        actor=support,
    )
    assert adjustment.status == S.APPLIED
    assert adjustment.provider_route == "balance_transaction"
    (transaction,) = fake.balance_transactions
    assert adjustment.provider_credit_id == transaction["id"]
    assert (transaction["amount"], transaction["currency"]) == (-2500, "usd")
    assert transaction["metadata"]["meterops_reason"] == "outage_sla"
    assert transaction["metadata"]["meterops_adjustment"] == f"adj-{adjustment.pk}"
    (call,) = fake.calls("/v1/customers/", method="POST")[-1:]
    assert call["idempotency_key"] == adjustment_idempotency_key(adjustment)
    s.account.refresh_from_db()
    assert fake.customers[s.account.provider_customer_id]["balance"] == -2500


@pytest.mark.django_db
def test_a_usage_correction_on_an_invoiced_period_is_a_credit_note_with_a_mapped_reason(
    fake, support
):
    s = scenario(per_day=100, past=True)
    billing_period_close(period=s.period, now=s.period.ends_at + dt.timedelta(hours=1))
    customer = fake.add_customer(name=s.account.name)
    s.account.provider_customer_id = customer
    s.account.save(update_fields=["provider_customer_id"])
    invoice = fake.create_invoice(
        customer=customer,
        lines=[],
        period_start=int(s.period.starts_at.timestamp()),
        period_end=int(s.period.ends_at.timestamp()),
        status="open",
    )
    invoice["total"] = 100_00
    ProviderInvoice.objects.create(
        provider="stripe",
        provider_invoice_id=invoice["id"],
        account=s.account,
        customer_id=customer,
        status="open",
        currency="usd",
        total_minor=100_00,
        period_start=s.period.starts_at,
        period_end=s.period.ends_at,
        pulled_at=timezone.now(),
    )
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="usage_correction",
        meter=s.meter,
        day=s.period.start_date,
        corrected_quantity=Decimal(70),
        reason_code="duplicate_usage",
        note="Events sent twice",
        actor=support,
    )
    assert adjustment.status == S.APPLIED, adjustment.provider_error
    assert adjustment.provider_route == "credit_note"
    (note,) = fake.credit_notes
    assert (note["id"], note["invoice"], note["amount"]) == (
        adjustment.provider_credit_id,
        invoice["id"],
        30_00,
    )
    assert note["reason"] == "duplicate"
    assert note["metadata"]["meterops_reason"] == "duplicate_usage"


@pytest.mark.django_db
def test_an_invoiced_period_without_a_known_provider_invoice_fails_and_says_what_to_do(
    fake, support
):
    s = scenario(per_day=100, past=True)
    billing_period_close(period=s.period, now=s.period.ends_at + dt.timedelta(hours=1))
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=500,
        period_start=s.period.start_date,
        reason_code="goodwill",
        note="sorry",
        actor=support,
    )
    assert adjustment.status == S.FAILED
    assert "pull_provider" in adjustment.provider_error
    assert not fake.credit_notes and not fake.balance_transactions


def test_the_fake_replays_a_key_with_the_same_params_and_refuses_it_with_others(fake):
    import stripe

    client = stripe.StripeClient(fake.api_key, base_addresses={"api": fake.url})
    customer = fake.add_customer()
    first = client.v1.customers.balance_transactions.create(
        customer, {"amount": -100, "currency": "usd"}, {"idempotency_key": "k"}
    )
    again = client.v1.customers.balance_transactions.create(
        customer, {"amount": -100, "currency": "usd"}, {"idempotency_key": "k"}
    )
    assert again.id == first.id and len(fake.balance_transactions) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.customers.balance_transactions.create(
            customer, {"amount": -200, "currency": "usd"}, {"idempotency_key": "k"}
        )
    assert fake.customers[customer]["balance"] == -100


_CRASH = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from django.contrib.auth import get_user_model
from adjustments import services
from adjustments.models import Adjustment

def crash(adjustment, result):
    # Stripe answered; we die before storing its answer.
    os._exit(17)

services.provider_answered_hook = crash
services.adjustment_apply(
    adjustment=Adjustment.objects.get(pk=int(sys.argv[1])),
    actor=services.Actor(user=get_user_model().objects.get(pk=int(sys.argv[2]))),
)
sys.exit(0)
"""


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_stripe_answered_and_before_we_committed_credits_once(fake, support, manager):
    s = scenario(per_day=500)
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=200_00,
        reason_code="metering_error",
        note="Double-counted day",
        actor=support,
    )
    adjustment = adjustment_approve(adjustment=adjustment, actor=manager, apply=False)
    assert adjustment.status == S.APPROVED

    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BILLING_PROVIDER": "stripe",
        "STRIPE_API_KEY": fake.api_key,
        "STRIPE_API_BASE": fake.url,
    }
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH, str(adjustment.pk), str(manager.user.pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    assert len(fake.balance_transactions) == 1
    adjustment.refresh_from_db()
    assert adjustment.status == S.APPROVED and adjustment.provider_credit_id == ""

    rerun = adjustment_apply(adjustment=adjustment, actor=manager)

    assert rerun.status == S.APPLIED
    assert len(fake.balance_transactions) == 1  # Stripe replayed its first answer
    assert rerun.provider_credit_id == fake.balance_transactions[0]["id"]
    calls = fake.calls("/v1/customers/", method="POST")
    credit_calls = [c for c in calls if c["path"].endswith("/balance_transactions")]
    assert len(credit_calls) == 2
    assert {c["idempotency_key"] for c in credit_calls} == {adjustment_idempotency_key(rerun)}
    assert _form(credit_calls[0]) == _form(credit_calls[1])
    s.account.refresh_from_db()
    assert fake.customers[s.account.provider_customer_id]["balance"] == -200_00
