"""The manager's queue and the mismatch page: sorted by money, filters, the page's numbers,
chart, ledger and history, and actions only for those allowed."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from billing.models import PushLedgerEntry
from billing.providers.simulated import FaultSettings, SimulatedProvider
from billing.services.push import push_ledger_enqueue
from reconciliation.models import Mismatch
from reconciliation.permissions import MANAGER_PERMISSIONS
from reconciliation.services import reconciliation_run
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

QUEUE = "/admin/reconciliation/mismatch/"


def _grant(role: str, dotted: tuple[str, ...]) -> None:
    """What the roles module will do once these permissions are added to it."""
    group = Group.objects.get(name=role)
    for name in dotted:
        app_label, codename = name.split(".")
        group.permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )


@pytest.fixture
def login(django_user_model):
    _grant("Manager", MANAGER_PERMISSIONS)

    def make(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=role.lower(), password="x-irrelevant-9", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client = Client()
        client.force_login(user)
        client.user = user
        return client

    return make


@pytest.fixture
def queue():
    """Two accounts: one with failed ledger entries (not pushed), one whose usage the provider
    dropped; a 'pro' tier on the second."""
    meters = meters_count_sum_max()
    plan = plan_for(meters)
    accounts = []
    for name, tier in (("failing", "growth"), ("dropping", "pro")):
        account, period = account_with_period(
            external_id=name,
            tz="Asia/Kolkata",
            plan=plan,
            start=today() - timedelta(days=32),
            end=today() - timedelta(days=2),
        )
        account.tier = tier
        account.save()
        ingest([e for m in meters[:2] for e in usage_for(account, m, period)])
        accounts.append(account)
    push_ledger_enqueue(provider_name="simulated")
    failing = PushLedgerEntry.objects.filter(account=accounts[0], meter=meters[0])
    PushLedgerEntry.objects.filter(pk__in=list(failing.values_list("pk", flat=True)[:5])).update(
        status="failed"
    )
    push(FaultSettings(seed=4, drop_rate=Decimal("0.4")))
    for account in accounts:
        reconciliation_run(account=account, provider=SimulatedProvider())
    return accounts


def test_the_queue_is_sorted_by_money_and_filters(queue, login, django_assert_max_num_queries):
    manager = login("Manager")

    with django_assert_max_num_queries(15):
        page = manager.get(QUEUE)

    assert page.status_code == 200
    rows = list(page.context["cl"].result_list)
    amounts = [m.delta_amount_minor for m in rows]
    assert amounts == sorted(amounts, reverse=True) and len(rows) == Mismatch.objects.count()
    cause = manager.get(QUEUE, {"cause": "not_pushed"}).context["cl"].result_list
    assert {(m.account.external_id, m.meter.code) for m in cause} == {("failing", "calls")}
    tier = manager.get(QUEUE, {"account__tier": "pro"}).context["cl"].result_list
    assert {m.account.external_id for m in tier} == {"dropping"}
    assert len(manager.get(QUEUE, {"age": "older"}).context["cl"].result_list) == 0
    assert manager.get(QUEUE, {"meter__id__exact": rows[0].meter_id}).status_code == 200


def test_the_mismatch_page_shows_numbers_causes_days_chart_ledger_and_history(
    queue, login, django_assert_max_num_queries
):
    manager = login("Manager")
    mismatch = Mismatch.objects.get(account__external_id="failing", meter__code="calls")

    with django_assert_max_num_queries(25):
        page = manager.get(reverse("admin:reconciliation_mismatch_change", args=[mismatch.pk]))

    text = page.content.decode()
    assert page.status_code == 200
    assert "Not pushed (ledger pending or failed)" in text
    assert "5 calls of this period are still in the push ledger" in text
    assert 'id="mismatch-days"' in text and "plotly" in text
    assert len(page.context["days"]) == 33  # Kolkata: 31 UTC days touch the period, +1 each side
    # Ledger identifiers carry the installation id: mo-<installation>-e<event id>.
    assert re.search(r"mo-[0-9a-f]+-e\d+", text) and "Failed (needs a person)" in text
    assert "Opened by reconciliation run" in text
    assert "/admin/metering/usageevent/?account__id__exact=" in text
    assert 'action="/admin/reconciliation/mismatch/' in text  # the manager may act


def test_a_manager_acknowledges_re_pushes_and_resolves_from_the_page(queue, login):
    manager = login("Manager")
    mismatch = Mismatch.objects.get(account__external_id="failing", meter__code="calls")
    act = reverse("admin:reconciliation_mismatch_act", args=[mismatch.pk])

    manager.post(act, {"action": "acknowledge", "reason": "mine"})
    manager.post(act, {"action": "repush", "reason": "the provider was down"})
    manager.post(act, {"action": "resolve", "resolution": "repushed", "reason": "re-sent"})

    mismatch.refresh_from_db()
    assert (mismatch.status, mismatch.resolution, mismatch.assignee) == (
        "resolved",
        "repushed",
        manager.user,
    )
    assert not PushLedgerEntry.objects.filter(status="failed").exists()
    reasons = list(
        mismatch.history.filter(history_user=manager.user).values_list(
            "history_change_reason", flat=True
        )
    )
    assert sorted(reasons) == [
        "Acknowledged: mine",
        "Re-pushed 5 failed entr(ies): the provider was down",
        "Resolved (repushed): re-sent",
    ]


def test_changelist_actions_need_a_reason_and_their_permission(queue, login):
    manager = login("Manager")
    ids = list(Mismatch.objects.values_list("pk", flat=True))

    manager.post(QUEUE, {"action": "acknowledge_selected", "_selected_action": ids})
    assert not Mismatch.objects.filter(status="acknowledged").exists()  # no reason given

    manager.post(
        QUEUE, {"action": "acknowledge_selected", "_selected_action": ids, "reason": "triage"}
    )
    assert Mismatch.objects.filter(status="acknowledged").count() == len(ids)


@pytest.mark.parametrize("role", ["Support", "Auditor"])
def test_support_and_auditors_read_but_cannot_act(queue, login, role):
    client = login(role)
    mismatch = Mismatch.objects.first()
    act = reverse("admin:reconciliation_mismatch_act", args=[mismatch.pk])

    assert client.get(QUEUE).status_code == 200
    page = client.get(reverse("admin:reconciliation_mismatch_change", args=[mismatch.pk]))
    assert page.status_code == 200 and 'id="recon-act"' not in page.content.decode()
    assert (
        client.post(act, {"action": "resolve", "resolution": "accepted", "reason": "x"}).status_code
        == 403
    )
    listing = client.post(
        QUEUE, {"action": "resolve_selected", "_selected_action": [mismatch.pk], "reason": "x"}
    )
    assert listing.status_code == 403
    mismatch.refresh_from_db()
    assert mismatch.status == "open"


def test_runs_and_thresholds_pages_open(queue, admin_client):
    assert admin_client.get("/admin/reconciliation/reconciliationrun/").status_code == 200
    assert admin_client.get("/admin/reconciliation/reconciliationthreshold/add/").status_code == 200
