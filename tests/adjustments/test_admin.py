"""The adjustments admin: the request page with its preview, the actions, and a permission
matrix over Support, Manager, Auditor and a staff user in no group (crafted POSTs included)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from adjustments.models import Adjustment
from adjustments.services import Actor, adjustment_approve, adjustment_request
from billing.models import SimulatedCredit
from tests.adjustments.support import role_user, scenario

pytestmark = pytest.mark.django_db
S = Adjustment.Status
ROLES = ("Support", "Manager", "Auditor", None)


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _request_url(account) -> str:
    return reverse("admin:adjustments_adjustment_request", args=[account.pk])


def _act(client, adjustment, action, **extra):
    return client.post(
        reverse("admin:adjustments_adjustment_act", args=[adjustment.pk]),
        {"action": action, **extra},
    )


def _credit_form(amount: str = "200.00", **extra) -> dict:
    return {
        "kind": "credit",
        "amount": amount,
        "reason_code": "outage_sla",
        "note": "API down three hours",
        "ticket": "ZD-42",
        **extra,
    }


def _requested(account, requester, amount_minor=200_00) -> Adjustment:
    adjustment, _ = adjustment_request(
        account=account,
        kind="credit",
        amount_minor=amount_minor,
        reason_code="goodwill",
        note="as agreed",
        actor=Actor(user=requester),
    )
    return adjustment


def test_the_request_page_previews_the_invoice_before_and_after_then_submits(
    django_user_model,
):
    s = scenario(per_day=300)
    client = _client(role_user(django_user_model, "Support"))
    page = client.get(_request_url(s.account))
    assert page.status_code == 200
    assert b"Submit request" not in page.content  # only after a preview

    preview = client.post(_request_url(s.account), {**_credit_form("25.00"), "_preview": "1"})
    text = preview.content.decode()
    assert 'id="adjustment-preview"' in text
    assert "$300.00" in text and "$275.00" in text  # before and after
    assert "applied on submit" in text
    assert not Adjustment.objects.exists()  # a preview writes nothing

    submitted = client.post(_request_url(s.account), {**_credit_form("25.00"), "_submit": "1"})
    adjustment = Adjustment.objects.get()
    assert submitted.status_code == 302
    assert (adjustment.status, adjustment.amount_minor) == (S.APPLIED, 2500)


def test_a_yen_amount_with_decimals_is_refused_by_the_form(django_user_model):
    s = scenario(currency="JPY", per_day=300)
    client = _client(role_user(django_user_model, "Support"))
    answer = client.post(_request_url(s.account), {**_credit_form("10.5"), "_submit": "1"})
    assert answer.status_code == 200
    assert "JPY has no smaller unit" in answer.content.decode()
    assert not Adjustment.objects.exists()


@pytest.mark.parametrize(
    ("role", "may_view", "may_request"),
    [
        ("Support", True, True),
        ("Manager", True, True),
        ("Auditor", True, False),
        (None, False, False),
    ],
)
def test_matrix_view_and_request(django_user_model, role, may_view, may_request):
    s = scenario(per_day=300)
    client = _client(role_user(django_user_model, role))
    listing = client.get(reverse("admin:adjustments_adjustment_changelist"))
    assert listing.status_code == (200 if may_view else 403)
    answer = client.post(_request_url(s.account), {**_credit_form(), "_submit": "1"})
    if may_request:
        assert answer.status_code == 302
        assert Adjustment.objects.get().status == S.REQUESTED  # 200.00 > the 100.00 limit
    else:
        assert answer.status_code == 403
        assert not Adjustment.objects.exists()


@pytest.mark.parametrize(
    ("role", "may_approve"),
    [("Support", False), ("Manager", True), ("Auditor", False), (None, False)],
)
def test_matrix_approve_and_reject_another_persons_request(django_user_model, role, may_approve):
    s = scenario(per_day=300)
    requester = role_user(django_user_model, "Support", "requester")
    first = _requested(s.account, requester)
    second = _requested(s.account, requester)
    client = _client(role_user(django_user_model, role))

    approved = _act(client, first, "approve")
    rejected = _act(client, second, "reject", reason="not covered by the SLA")
    first.refresh_from_db()
    second.refresh_from_db()
    if may_approve:
        assert approved.status_code == rejected.status_code == 302
        assert first.status == S.APPLIED and first.approved_by.username != "requester"
        assert second.status == S.REJECTED
        assert second.rejection_reason == "not covered by the SLA"
    else:
        assert approved.status_code == rejected.status_code == 403
        assert first.status == second.status == S.REQUESTED
        assert not SimulatedCredit.objects.exists()


def test_a_manager_cannot_approve_their_own_request_from_the_admin(django_user_model):
    s = scenario(per_day=300)
    manager = role_user(django_user_model, "Manager")
    own = _requested(s.account, manager)
    client = _client(manager)
    page = client.get(reverse("admin:adjustments_adjustment_change", args=[own.pk]))
    assert 'id="adjustment-approve"' not in page.content.decode()
    answer = _act(client, own, "approve")  # crafted
    assert answer.status_code == 302
    own.refresh_from_db()
    assert own.status == S.REQUESTED and own.approved_by is None
    # Nor from the list's action.
    client.post(
        reverse("admin:adjustments_adjustment_changelist"),
        {"action": "approve_selected", "_selected_action": [own.pk]},
    )
    own.refresh_from_db()
    assert own.status == S.REQUESTED


@pytest.mark.parametrize(
    ("role", "may_apply"),
    [("Support", True), ("Manager", True), ("Auditor", False), (None, False)],
)
def test_matrix_apply_an_approved_adjustment(django_user_model, role, may_apply):
    s = scenario(per_day=300)
    requester = role_user(django_user_model, "Support", "requester")
    manager = role_user(django_user_model, "Manager", "approver")
    adjustment = adjustment_approve(
        adjustment=_requested(s.account, requester), actor=Actor(user=manager), apply=False
    )
    answer = _act(_client(role_user(django_user_model, role)), adjustment, "apply")
    adjustment.refresh_from_db()
    if may_apply:
        assert answer.status_code == 302 and adjustment.status == S.APPLIED
    else:
        assert answer.status_code == 403 and adjustment.status == S.APPROVED


@pytest.mark.parametrize("role", ["Support", "Auditor", None])
def test_crafted_list_action_posts_are_refused_without_the_permission(django_user_model, role):
    s = scenario(per_day=300)
    adjustment = _requested(s.account, role_user(django_user_model, "Manager", "requester"))
    client = _client(role_user(django_user_model, role))
    answer = client.post(
        reverse("admin:adjustments_adjustment_changelist"),
        {"action": "approve_selected", "_selected_action": [adjustment.pk]},
    )
    assert answer.status_code == 403
    adjustment.refresh_from_db()
    assert adjustment.status == S.REQUESTED


def test_the_account_page_links_to_the_request_page_for_support_only(django_user_model):
    s = scenario(per_day=300)
    url = reverse("admin:metering_account_change", args=[s.account.pk])
    support = _client(role_user(django_user_model, "Support")).get(url).content.decode()
    auditor = _client(role_user(django_user_model, "Auditor")).get(url).content.decode()
    assert _request_url(s.account) in support
    assert _request_url(s.account) not in auditor
