"""The period roll reconciles an ended period before closing it, and holds it while mismatches
over the threshold are open: until a Manager resolves them or releases the hold with a reason.
The hold never blocks ingestion."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from billing.models import BillingPeriod, PushLedgerEntry
from billing.services.periods import billing_period_hold_release, billing_periods_roll
from billing.services.push import push_ledger_enqueue
from metering.models import UsageEvent
from reconciliation.models import Mismatch, ReconciliationRun
from reconciliation.services import mismatch_resolve
from tests.metering.factories import api_key_for
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    push,
    today,
    usage_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def held_world(settings):
    """A UTC account whose 30-day period ended two days ago; two of its `calls` ledger entries
    failed, so the provider holds 2 calls fewer than ours: a mismatch over any threshold."""
    assert settings.BILLING_CLOSE_CHECKS == [
        "reconciliation.services.reconciliation_period_close_check"
    ]
    meters = meters_count_sum_max()
    account, period = account_with_period(
        external_id="acme",
        tz="UTC",
        plan=plan_for(meters),
        start=today() - timedelta(days=32),
        end=today() - timedelta(days=2),
    )
    ingest([e for meter in meters for e in usage_for(account, meter, period)])
    push_ledger_enqueue(provider_name="simulated")
    failed = PushLedgerEntry.objects.filter(meter=meters[0]).values_list("pk", flat=True)[:2]
    PushLedgerEntry.objects.filter(pk__in=list(failed)).update(status="failed")
    push()
    return account, period


def _manager(django_user_model, role="Manager"):
    user = django_user_model.objects.create_user(
        username=role.lower(), password="x-irrelevant-9", is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    return user


def test_the_roll_holds_a_period_with_an_open_mismatch_and_ingestion_goes_on(
    held_world, api_client
):
    account, period = held_world

    roll = billing_periods_roll()

    assert roll.held == 1
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN and period.is_held
    assert (
        period.hold_reason == "calls: ours 93, provider 91 (not_pushed, 2 USD minor units at stake)"
    )
    assert ReconciliationRun.objects.filter(trigger="period_close").count() == 1
    # The held account's usage is still accepted (here: late usage inside the held period).
    _key, raw = api_key_for(["ingest"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    late = {
        "transaction_id": "late-1",
        "external_customer_id": "acme",
        "code": "calls",
        "timestamp": int((period.ends_at - timedelta(hours=1)).timestamp()),
    }
    response = api_client.generic(
        "POST", "/api/v1/events", json.dumps({"event": late}), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    assert UsageEvent.objects.filter(transaction_id="late-1", account=account).exists()


def test_resolving_the_mismatches_lets_the_next_roll_close_the_period(
    held_world, django_user_model
):
    _account, period = held_world
    billing_periods_roll()
    manager = _manager(django_user_model)
    for mismatch in Mismatch.objects.unresolved():
        mismatch_resolve(
            mismatch=mismatch, resolution="accepted", actor=manager, reason="2 calls, known"
        )

    roll = billing_periods_roll()

    assert roll.held == 0 and roll.closed >= 1
    period.refresh_from_db()
    assert (period.state, period.hold_reason) == (BillingPeriod.State.CLOSED, "")


def test_a_manager_releases_the_hold_with_a_reason_and_the_next_roll_closes_it(
    held_world, django_user_model
):
    _account, period = held_world
    billing_periods_roll()
    manager = _manager(django_user_model)

    billing_period_hold_release(period=period, actor=manager, reason="Invoice now, fix later")
    roll = billing_periods_roll()

    assert roll.held == 0 and roll.closed >= 1
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.CLOSED
    assert Mismatch.objects.unresolved().count() == 1  # still open: released, not resolved
    assert period.hold_released_by == manager
    release = period.history.filter(hold_released_at__isnull=False).earliest("history_date")
    assert release.history_user == manager
    assert release.history_change_reason == "Hold released: Invoice now, fix later"


def _release_in_admin(client, period, reason="Invoice now"):
    return client.post(
        reverse("admin:billing_billingperiod_changelist"),
        {"action": "release_hold", "_selected_action": [str(period.pk)], "reason": reason},
        follow=True,
    )


def test_the_admin_shows_the_hold_and_a_manager_releases_it_there(held_world, django_user_model):
    _account, period = held_world
    billing_periods_roll()
    client = Client()
    client.force_login(_manager(django_user_model))

    listing = client.get(reverse("admin:billing_billingperiod_changelist") + "?held=yes")
    assert "held: calls: ours 93, provider 91" in listing.content.decode()
    page = client.get(reverse("admin:billing_billingperiod_change", args=[period.pk]))
    assert "not_pushed" in page.content.decode()

    assert "Give a reason" in _release_in_admin(client, period, reason="").content.decode()
    period.refresh_from_db()
    assert period.hold_released_at is None
    response = _release_in_admin(client, period)
    assert response.status_code == 200
    period.refresh_from_db()
    assert period.hold_released_at is not None


@pytest.mark.parametrize("role", ["Auditor", "Support"])
def test_auditor_and_support_cannot_release_a_hold(held_world, django_user_model, role):
    _account, period = held_world
    billing_periods_roll()
    client = Client()
    client.force_login(_manager(django_user_model, role=role))

    assert _release_in_admin(client, period).status_code == 403
    with pytest.raises(PermissionDenied):
        billing_period_hold_release(
            period=period, actor=django_user_model.objects.get(), reason="x"
        )
    period.refresh_from_db()
    assert period.hold_released_at is None and period.is_held
