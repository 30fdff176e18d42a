"""Where a billing hold shows (the hold's page, the account hub, the projected invoice, the
account API) and who may release it from the admin."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from alerts.models import BillingHold
from alerts.services import billing_hold_open
from alerts.signals import billing_hold_released
from metering.models import Meter, UsageEvent
from metering.services.rollups import rollup_drain
from tests.billing.projection_scenarios import count_scenario
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db

SINCE = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def staff(django_user_model, role: str | None, name: str) -> Client:
    user = django_user_model.objects.create_user(name, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def account():
    return AccountFactory(external_id="pages-co", name="Pages Co")


@pytest.fixture
def the_hold(account):
    return billing_hold_open(
        account=account, alert=None, at=SINCE, reason="Projected invoice 4x last month"
    )


def old_event(account, days: int) -> UsageEvent:
    meter = MeterFactory(code=f"m{days}", aggregation=Meter.Aggregation.COUNT)
    event = UsageEvent.objects.create(
        account=account,
        meter=meter,
        transaction_id=f"old-{days}",
        occurred_at=timezone.now() - timedelta(days=days),
        received_at=timezone.now(),
        value=1,
        properties={},
        content_hash=hashlib.sha256(f"old-{days}".encode()).digest(),
    )
    rollup_drain()
    return event


# --- the API -----------------------------------------------------------------------------------


def test_the_account_api_shows_the_active_hold_and_null_otherwise(api_client, account):
    _key, raw = api_key_for(["read"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    url = f"/api/v1/accounts/{account.external_id}"

    assert api_client.get(url).json()["billing_hold"] is None

    hold = billing_hold_open(account=account, alert=None, at=SINCE, reason="Spike")
    body = api_client.get(url).json()
    assert body["billing_hold"] == {
        "status": "active",
        "since": "2026-11-02T09:30:00Z",
        "reason": "Spike",
    }

    BillingHold.objects.filter(pk=hold.pk).update(status=BillingHold.Status.RELEASED)
    assert api_client.get(url).json()["billing_hold"] is None


def test_the_account_api_reads_the_hold_in_bounded_queries(
    api_client, account, the_hold, django_assert_max_num_queries
):
    _key, raw = api_key_for(["read"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    with django_assert_max_num_queries(4):
        response = api_client.get(f"/api/v1/accounts/{account.external_id}")
    assert response.status_code == 200 and response.json()["billing_hold"]["status"] == "active"


# --- the pages ---------------------------------------------------------------------------------


def test_the_hold_page_warns_near_the_window_and_offers_a_manager_the_release(
    django_user_model, settings, account, the_hold
):
    settings.BILLING_HOLD_WARN_DAYS = 30
    old = old_event(account, 31)
    manager = staff(django_user_model, "Manager", "m")
    support = staff(django_user_model, "Support", "s")
    url = reverse("admin:alerts_billinghold_change", args=[the_hold.pk])

    page = manager.get(url).content.decode()
    seen = support.get(url).content.decode()

    assert 'id="billing-hold-window-warning"' in page and "31 days old" in page
    deadline = old.occurred_at + timedelta(days=35)
    assert f"before {deadline:%Y-%m-%d %H:%M} UTC" in page
    assert "3 full days left" in page  # of the 35-day window
    assert "2026-11-02 09:30 UTC" in page
    assert 'id="billing-hold-release"' in page
    assert 'id="billing-hold-window-warning"' in seen
    assert 'id="billing-hold-release"' not in seen and "Only a Manager" in seen


def test_the_hold_page_has_no_warning_while_held_usage_is_recent(
    django_user_model, account, the_hold
):
    old_event(account, 3)
    page = staff(django_user_model, "Manager", "m").get(
        reverse("admin:alerts_billinghold_change", args=[the_hold.pk])
    )
    body = page.content.decode()
    assert page.status_code == 200
    assert 'id="billing-hold-oldest"' in body and "31 full days left" in body
    assert 'id="billing-hold-window-warning"' not in body


def test_the_account_hub_shows_the_hold_and_a_manager_releases_it_there(
    django_user_model, settings, account, the_hold
):
    settings.BILLING_HOLD_WARN_DAYS = 10
    old_event(account, 12)
    manager = staff(django_user_model, "Manager", "m")
    account_url = reverse("admin:metering_account_change", args=[account.pk])

    page = manager.get(account_url).content.decode()
    assert 'id="billing-hold"' in page and "Projected invoice 4x last month" in page
    assert 'id="billing-hold-window-warning"' in page

    response = manager.post(
        reverse("admin:alerts_billinghold_release", args=[the_hold.pk]),
        {"reason": "Customer confirmed the batch", "mode": "push", "next": account_url},
    )

    assert response.status_code == 302 and response["Location"] == account_url
    the_hold.refresh_from_db()
    assert the_hold.status == "released" and the_hold.release_reason.startswith("Customer")
    assert 'id="billing-hold"' not in manager.get(account_url).content.decode()


@pytest.mark.parametrize(
    ("credit", "released", "signal_amount"),
    [("120.50", True, 12050), ("", False, None), ("1.005", False, None), ("ten", False, None)],
)
def test_push_and_open_a_credit_takes_the_credit_in_the_accounts_currency(
    django_user_model,
    account,
    the_hold,
    django_capture_on_commit_callbacks,
    credit,
    released,
    signal_amount,
):
    manager = staff(django_user_model, "Manager", "m")
    received = []

    def receiver(sender, **kwargs):
        received.append(kwargs["credit_amount_minor"])

    billing_hold_released.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            manager.post(
                reverse("admin:alerts_billinghold_release", args=[the_hold.pk]),
                {"reason": "Real batch", "mode": "push_and_credit", "credit_amount": credit},
            )
    finally:
        billing_hold_released.disconnect(receiver)

    the_hold.refresh_from_db()
    assert (the_hold.status == "released") is released
    assert received == ([signal_amount] if released else [])


def test_the_account_hub_without_a_hold_shows_no_panel(django_user_model, account):
    page = staff(django_user_model, "Support", "s").get(
        reverse("admin:metering_account_change", args=[account.pk])
    )
    assert page.status_code == 200 and 'id="billing-hold"' not in page.content.decode()


def test_the_projected_invoice_page_shows_the_hold(django_user_model):
    scenario = count_scenario(started=datetime(2026, 11, 1).date(), now=timezone.now())
    billing_hold_open(account=scenario.account, alert=None, at=SINCE, reason="Spike x10")
    url = reverse("admin:billing_projection_panel", args=[scenario.account.pk])
    client = staff(django_user_model, "Support", "s")

    for page in (client.get(url), client.get(url + "?embed=1")):
        body = page.content.decode()
        assert page.status_code == 200
        assert 'id="projection-billing-hold"' in body
        assert "Billing held since 2026-11-02 09:30 UTC: Spike x10" in body


def test_the_projected_invoice_page_without_a_hold_says_nothing_of_one(django_user_model):
    scenario = count_scenario(started=datetime(2026, 11, 1).date(), now=timezone.now())
    page = staff(django_user_model, "Support", "s").get(
        reverse("admin:billing_projection_panel", args=[scenario.account.pk])
    )
    assert page.status_code == 200 and "projection-billing-hold" not in page.content.decode()


# --- who may release ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["Support", "Auditor", None])
def test_only_a_manager_may_release_through_the_admin_whatever_is_posted(
    django_user_model, account, the_hold, role
):
    client = staff(django_user_model, role, f"u-{role}")
    crafted = {"reason": "crafted", "mode": "push_and_credit"}

    via_view = client.post(reverse("admin:alerts_billinghold_release", args=[the_hold.pk]), crafted)
    via_action = client.post(
        reverse("admin:alerts_billinghold_changelist"),
        {"action": "release_selected", "_selected_action": [the_hold.pk], **crafted},
    )

    assert via_view.status_code == 403 and via_action.status_code == 403
    the_hold.refresh_from_db()
    assert the_hold.status == "active" and the_hold.history.count() == 1


def test_the_release_action_needs_a_reason_and_releases_with_the_chosen_mode(
    django_user_model, account, the_hold
):
    manager = staff(django_user_model, "Manager", "m")
    changelist = reverse("admin:alerts_billinghold_changelist")
    post = {"action": "release_selected", "_selected_action": [the_hold.pk]}

    manager.post(changelist, {**post, "reason": "", "mode": "push"})
    the_hold.refresh_from_db()
    assert the_hold.status == "active"

    manager.post(changelist, {**post, "reason": "Fine", "mode": "push_and_credit"})
    the_hold.refresh_from_db()
    assert the_hold.status == "active"  # "push and open a credit" needs the credit's amount

    manager.post(
        changelist,
        {**post, "reason": "Fine", "mode": "push_and_credit", "credit_amount": "10.00"},
    )
    the_hold.refresh_from_db()
    assert the_hold.status == "released" and the_hold.release_mode == "push_and_credit"


def test_the_release_view_refuses_get_and_foreign_redirects(django_user_model, account, the_hold):
    manager = staff(django_user_model, "Manager", "m")
    url = reverse("admin:alerts_billinghold_release", args=[the_hold.pk])

    assert manager.get(url).status_code == 403
    response = manager.post(url, {"reason": "ok", "next": "https://evil.example/"})

    assert response["Location"] == reverse("admin:alerts_billinghold_change", args=[the_hold.pk])
