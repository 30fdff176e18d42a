"""The staff roles, end to end through the admin: who may see, change and replay what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from metering.models import Account, Meter, QuarantinedEvent
from metering.services.api_keys import api_key_create
from metering.services.ingest import events_ingest
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model):
    """Log a staff user of the given role into a fresh client."""
    from django.test import Client

    def make(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=role.lower(), password="x-irrelevant-9", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client = Client()
        client.force_login(user)
        return client

    return make


def _quarantine_one(external_id: str = "newco") -> QuarantinedEvent:
    MeterFactory(code="api_calls", aggregation="count", value_property="", dimensions=[])
    result = events_ingest(
        items=[
            {
                "transaction_id": "q-1",
                "external_customer_id": external_id,
                "code": "api_calls",
                "timestamp": "2024-05-01T12:00:00Z",
                "properties": {},
            }
        ],
        fmt="lago",
    )
    assert result.results[0].status == "quarantined"
    return QuarantinedEvent.objects.get(transaction_id="q-1")


def test_every_role_group_exists_after_migrate():
    assert set(Group.objects.values_list("name", flat=True)) >= {"Support", "Manager", "Auditor"}


def test_auditor_permissions_are_all_view_permissions():
    codenames = list(
        Group.objects.get(name="Auditor").permissions.values_list("codename", flat=True)
    )
    assert codenames
    # Reads only: views, and the audit log's export (a read of a date range).
    assert all(
        codename.startswith("view_") or codename == "export_auditentry" for codename in codenames
    )
    assert {"view_account", "view_usageevent", "view_historicalaccount"} <= set(codenames)


@pytest.mark.parametrize("role", ["Auditor", "Support", "Manager"])
def test_every_role_can_open_every_metering_changelist(staff, role):
    client = staff(role)
    for model in ("account", "meter", "usageevent", "quarantinedevent", "apikey"):
        response = client.get(reverse(f"admin:metering_{model}_changelist"))
        assert response.status_code == 200, model


def test_auditor_can_view_an_account_and_its_history_but_not_change_it(staff):
    account = AccountFactory(name="Before")
    client = staff("Auditor")
    change_url = reverse("admin:metering_account_change", args=[account.pk])

    page = client.get(change_url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content

    history = client.get(reverse("admin:metering_account_history", args=[account.pk]))
    assert history.status_code == 200

    posted = client.post(change_url, {"name": "After", "change_reason": "try"})
    assert posted.status_code == 403
    account.refresh_from_db()
    assert account.name == "Before"


def test_auditor_can_open_every_history_page(staff):
    quarantined = _quarantine_one()
    objects = {
        "account": AccountFactory(),
        "meter": Meter.objects.get(code="api_calls"),
        "quarantinedevent": quarantined,
        "apikey": api_key_create(name="k", scopes=["read"])[0],
    }
    client = staff("Auditor")
    for model, obj in objects.items():
        listing = client.get(reverse(f"admin:metering_{model}_history", args=[obj.pk]))
        assert listing.status_code == 200, model
        version = type(obj).history.filter(id=obj.pk).earliest()
        detail = client.get(
            reverse(f"admin:metering_{model}_simple_history", args=[obj.pk, version.history_id])
        )
        assert detail.status_code == 200, model
        assert b'name="_save"' not in detail.content, model


def test_auditor_cannot_revert_through_the_history_form(staff):
    account = AccountFactory(name="Original")
    version = account.history.earliest()
    Account.objects.filter(pk=account.pk).update(name="Current")
    client = staff("Auditor")
    url = reverse("admin:metering_account_simple_history", args=[account.pk, version.history_id])

    assert client.get(url).status_code == 200
    response = client.post(url, {"name": "Original", "change_reason": "revert"})

    assert response.status_code == 403
    account.refresh_from_db()
    assert account.name == "Current"


def test_auditor_gets_403_on_add_pages(staff):
    client = staff("Auditor")
    for model in ("account", "meter", "apikey"):
        assert client.get(reverse(f"admin:metering_{model}_add")).status_code == 403, model


def test_auditor_gets_403_on_the_replay_action_and_nothing_is_replayed(staff):
    quarantined = _quarantine_one()
    AccountFactory(external_id="newco")
    client = staff("Auditor")

    response = client.post(
        reverse("admin:metering_quarantinedevent_changelist"),
        {"action": "replay_selected", "_selected_action": [quarantined.pk], "index": 0},
    )

    assert response.status_code == 403
    quarantined.refresh_from_db()
    assert quarantined.event_id is None


def test_support_can_replay_quarantined_events(staff):
    quarantined = _quarantine_one()
    AccountFactory(external_id="newco")
    client = staff("Support")

    response = client.post(
        reverse("admin:metering_quarantinedevent_changelist"),
        {"action": "replay_selected", "_selected_action": [quarantined.pk], "index": 0},
        follow=True,
    )

    assert response.status_code == 200
    quarantined.refresh_from_db()
    assert quarantined.status == QuarantinedEvent.Status.REPLAYED
    assert quarantined.event is not None
    assert quarantined.event.account.external_id == "newco"


def test_support_cannot_change_accounts(staff):
    account = AccountFactory(name="Before")
    client = staff("Support")

    response = client.post(
        reverse("admin:metering_account_change", args=[account.pk]),
        {"name": "After", "change_reason": "try"},
    )

    assert response.status_code == 403
    account.refresh_from_db()
    assert account.name == "Before"


def _account_form(account: Account, **changes) -> dict:
    data = {
        "name": account.name,
        "timezone": account.timezone,
        "currency": account.currency,
        "tier": account.tier,
        "status": account.status,
        "provider_customer_id": account.provider_customer_id,
        "metadata": "{}",
    }
    data.update(changes)
    return data


def test_manager_changes_an_account_and_the_history_records_who_and_why(staff):
    account = AccountFactory(name="Before", timezone="UTC")
    client = staff("Manager")

    response = client.post(
        reverse("admin:metering_account_change", args=[account.pk]),
        _account_form(account, name="After", timezone="Asia/Kathmandu", change_reason="renamed"),
    )

    assert response.status_code == 302, response.content
    account.refresh_from_db()
    assert (account.name, account.timezone) == ("After", "Asia/Kathmandu")
    latest = account.history.latest()
    assert latest.history_user.username == "manager"
    assert latest.history_change_reason == "renamed"


def test_manager_change_without_a_reason_is_refused(staff):
    account = AccountFactory(name="Before")
    client = staff("Manager")

    response = client.post(
        reverse("admin:metering_account_change", args=[account.pk]),
        _account_form(account, name="After"),
    )

    assert response.status_code == 200
    assert "change_reason" in response.context["adminform"].form.errors
    account.refresh_from_db()
    assert account.name == "Before"


def test_manager_changes_a_meter(staff):
    meter = MeterFactory(code="tokens", name="Tokens", aggregation="sum", value_property="tokens")
    client = staff("Manager")

    response = client.post(
        reverse("admin:metering_meter_change", args=[meter.pk]),
        {
            "name": "LLM tokens",
            "aggregation": "sum",
            "value_property": "tokens",
            "dimensions": '["model"]',
            "unit": "tokens",
            "active": "on",
            "change_reason": "clearer name",
        },
    )

    assert response.status_code == 302, response.content
    meter.refresh_from_db()
    assert (meter.name, meter.dimensions) == ("LLM tokens", ["model"])
    assert Meter.history.filter(id=meter.pk).latest().history_change_reason == "clearer name"
