"""The billing admin: plans with prices, subscriptions through the service, read-mostly periods."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.models import BillingPeriod, Plan, Price, Subscription
from billing.periods import period_for
from billing.services.periods import billing_periods_roll
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.services import rollups
from tests.billing.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

pytestmark = pytest.mark.django_db

D = dt.date


@pytest.fixture
def superuser_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def auditor_client(django_user_model) -> Client:
    user = django_user_model.objects.create_user(
        username="auditor", password="x-irrelevant-9", is_staff=True
    )
    user.groups.add(Group.objects.get(name="Auditor"))
    client = Client()
    client.force_login(user)
    return client


def _plan_with_subscribers(count: int) -> Plan:
    plan = plan_create(code="growth", name="Growth", currency="USD", flat_fee_minor=10_00)
    price_add(plan=plan, meter=MeterFactory(code="api_calls"), model="per_unit", unit_price="0.001")
    for _ in range(count):
        subscription_create(
            account=AccountFactory(),
            plan=plan,
            started_at=D(2024, 1, 1),
            now=dt.datetime(2024, 1, 10, tzinfo=dt.UTC),
        )
    return plan


def _plan_form(meter, tiers: str, model: str = "graduated") -> dict:
    return {
        "code": "tiered",
        "name": "Tiered",
        "currency": "USD",
        "billing_interval": "month",
        "flat_fee_minor": "1000",
        "minimum_commitment_minor": "0",
        "active": "on",
        "prices-TOTAL_FORMS": "1",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
        "prices-0-meter": str(meter.pk),
        "prices-0-name": "",
        "prices-0-model": model,
        "prices-0-included_units": "0",
        "prices-0-flat_fee": "0",
        "prices-0-unit_price": "0",
        "prices-0-package_size": "",
        "prices-0-package_price": "0",
        "prices-0-tiers": tiers,
        "prices-0-provider_price_id": "",
    }


@pytest.mark.parametrize("model", ["plan", "price", "subscription", "billingperiod"])
def test_changelists_render_in_a_bounded_number_of_queries(
    superuser_client, django_assert_max_num_queries, model
):
    _plan_with_subscribers(5)
    with django_assert_max_num_queries(12):
        response = superuser_client.get(reverse(f"admin:billing_{model}_changelist"))
    assert response.status_code == 200


def test_plan_list_shows_money_formatted_and_counts(superuser_client):
    _plan_with_subscribers(3)
    body = superuser_client.get(reverse("admin:billing_plan_changelist")).content.decode()
    assert "$10.00" in body
    assert '<td class="field-subscription_count">3</td>' in body


def test_a_plan_is_added_with_tiers_typed_as_json_numbers_kept_exact(superuser_client):
    meter = MeterFactory()
    tiers = (
        '[{"up_to": 1000000, "unit_price": 0.000400000001}, {"up_to": null, "unit_price": 0.0002}]'
    )
    response = superuser_client.post(reverse("admin:billing_plan_add"), _plan_form(meter, tiers))
    assert response.status_code == 302, response.content.decode()[:2000]
    price = Price.objects.get(plan__code="tiered")
    assert price.tiers == [
        {"up_to": "1000000", "unit_price": "0.000400000001", "flat_fee": "0"},
        {"up_to": None, "unit_price": "0.0002", "flat_fee": "0"},
    ]


def test_a_plan_with_volume_tiers_that_get_cheaper_is_refused_in_the_form(superuser_client):
    meter = MeterFactory()
    tiers = json.dumps([{"up_to": "1000", "unit_price": "1"}, {"up_to": None, "unit_price": "0.8"}])
    response = superuser_client.post(
        reverse("admin:billing_plan_add"), _plan_form(meter, tiers, model="volume")
    )
    assert response.status_code == 200
    assert "would make more usage cheaper" in response.content.decode()
    assert not Plan.objects.exists()


def test_a_subscription_added_in_the_admin_opens_its_period(superuser_client, admin_user):
    plan = _plan_with_subscribers(0)
    account = AccountFactory(timezone="Asia/Kolkata")
    response = superuser_client.post(
        reverse("admin:billing_subscription_add"),
        {
            "account": str(account.pk),
            "plan": str(plan.pk),
            "started_at": "2024-01-31",
            "billing_anchor_day": "",
            "provider_subscription_id": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    sub = Subscription.objects.get(account=account)
    assert sub.billing_anchor_day == 31
    assert sub.history.get().history_user == admin_user
    assert sub.periods.filter(start_date=D(2024, 1, 31)).exists()


def test_the_subscription_form_shows_the_services_objection(superuser_client):
    plan = _plan_with_subscribers(0)
    account = AccountFactory(currency="EUR")
    response = superuser_client.post(
        reverse("admin:billing_subscription_add"),
        {"account": str(account.pk), "plan": str(plan.pk), "started_at": "2024-01-01"},
    )
    assert response.status_code == 200
    assert "bills in USD; the account uses EUR" in response.content.decode()
    assert not Subscription.objects.exists()


def test_billing_periods_cannot_be_added_and_show_read_only(superuser_client):
    _plan_with_subscribers(1)
    period = BillingPeriod.objects.get()
    assert superuser_client.get(reverse("admin:billing_billingperiod_add")).status_code == 403
    response = superuser_client.get(reverse("admin:billing_billingperiod_change", args=[period.pk]))
    assert response.status_code == 200
    assert 'name="state"' not in response.content.decode()


def test_an_auditor_sees_billing_but_cannot_run_its_actions(auditor_client):
    _plan_with_subscribers(1)
    period = BillingPeriod.objects.get()
    assert auditor_client.get(reverse("admin:billing_plan_changelist")).status_code == 200
    assert (
        auditor_client.get(
            reverse("admin:billing_plan_history", args=[period.subscription.plan_id])
        ).status_code
        == 200
    )
    response = auditor_client.post(
        reverse("admin:billing_billingperiod_changelist"),
        {"action": "begin_closing", "_selected_action": [str(period.pk)]},
    )
    assert response.status_code == 403
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN


def test_a_plan_in_a_currency_outside_iso_4217_is_refused(superuser_client, db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        plan_create(code="abc", name="ABC", currency="ABC")
    assert [e.code for e in caught.value.error_dict["currency"]] == ["invalid_currency"]

    form = _plan_form(MeterFactory(code="api_calls"), "[]", model="per_unit")
    form["currency"] = "ABC"
    response = superuser_client.post(reverse("admin:billing_plan_add"), form)
    assert response.status_code == 200
    assert "currency" in response.context["adminform"].form.errors
    assert not Plan.objects.exists()


def _begin_closing(client, period):
    return client.post(
        reverse("admin:billing_billingperiod_changelist"),
        {"action": "begin_closing", "_selected_action": [str(period.pk)]},
        follow=True,
    )


def test_begin_closing_refuses_a_period_whose_usage_is_still_being_rolled_up(superuser_client):
    # January 2024 ended long ago, but one of its events still waits in the rollup inbox.
    plan = _plan_with_subscribers(1)
    period = BillingPeriod.objects.get()
    meter = plan.prices.get().meter
    insert(event(period.account, meter, dt.datetime(2024, 1, 20, tzinfo=dt.UTC)))

    response = _begin_closing(superuser_client, period)

    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN
    text = " ".join(str(m) for m in response.context["messages"])
    assert "still being rolled up" in text
    assert "0 period(s) are now closing" in text

    rollups.rollup_drain()
    _begin_closing(superuser_client, period)
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.CLOSING
    # The roll then prices it with the event that was waiting.
    billing_periods_roll(now=timezone.now())
    period.refresh_from_db()
    assert (period.state, period.total_minor) == (BillingPeriod.State.CLOSED, 10_00 + 0)
    assert period.invoice_lines[1]["quantity"] == "1"


def test_begin_closing_refuses_a_period_still_in_its_grace(superuser_client, settings):
    _plan_with_subscribers(1)
    period = BillingPeriod.objects.get()
    # A grace longer than the time since January 2024 ended.
    settings.BILLING_CLOSE_GRACE_MINUTES = 60 * 24 * 365 * 100

    response = _begin_closing(superuser_client, period)

    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN
    assert "BILLING_CLOSE_GRACE_MINUTES" in " ".join(str(m) for m in response.context["messages"])


def test_cancel_at_period_end_action_ends_the_subscription_with_its_period(superuser_client):
    _plan_with_subscribers(1)
    sub = Subscription.objects.get()
    response = superuser_client.post(
        reverse("admin:billing_subscription_changelist"),
        {"action": "cancel_at_period_end", "_selected_action": [str(sub.pk)]},
    )
    assert response.status_code == 302
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.CANCELED
    current = period_for(anchor_day=1, tz="UTC", at=timezone.now())
    assert sub.ended_at == current.end_date
    assert sub.periods.get(start_date=current.start_date).end_date == current.end_date


def test_a_closed_period_shows_its_invoice_lines_as_a_table(superuser_client):
    plan = _plan_with_subscribers(1)
    period = BillingPeriod.objects.get()
    meter = plan.prices.get().meter
    for hour in range(3):
        insert(event(period.account, meter, dt.datetime(2024, 1, 20, hour, tzinfo=dt.UTC)))
    rollups.rollup_drain()
    _begin_closing(superuser_client, period)
    billing_periods_roll(now=timezone.now())
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.CLOSED

    html = superuser_client.get(
        reverse("admin:billing_billingperiod_change", args=[period.pk])
    ).content.decode()

    table = html.split('<table class="invoice-lines">')[1].split("</table>")[0]
    assert '<th class="num">Amount</th>' in table
    assert "<td>api_calls</td><td class='num'>3</td>" in table
    assert "<td class='num'>$10.00</td>" in table  # the plan fee
    assert "Total</th><th class='num'>$10.00</th>" in table
    assert '"amount_minor"' not in html  # not the JSON any more
