"""The account hub: the demo's stories, the sentence at the top, the search that opens the one
account it finds, the tabs' fragments, and a bounded number of queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.test.utils import override_settings
from django.urls import reverse

from adjustments.models import Adjustment
from alerts.models import Alert, BillingHold
from metering.currencies import currency_minor_unit
from metering.models import Account
from metering.services.demo import (
    RUNAWAY_INSTANCE,
    STORY_CREDIT,
    STORY_HOLD,
    STORY_MISMATCH,
    STORY_NEAR_QUOTA,
    STORY_SILENT,
    STORY_SPIKE,
    demo_accounts,
    demo_seed,
)
from reconciliation.models import Mismatch

pytestmark = pytest.mark.django_db

DEMO_ACCOUNTS = 8  # the five stories (positions 2 to 6) and three ordinary accounts


def _evaluation_time() -> dt.datetime:
    """Now, unless the spike account's local day began less than an hour ago: its runaway job
    then has not yet run long enough today to be a spike, so look two hours back (yesterday,
    local, when it was already running)."""
    now = dt.datetime.now(dt.UTC)
    spike = next(a for a in demo_accounts(DEMO_ACCOUNTS) if a.story == STORY_SPIKE)
    local = now.astimezone(ZoneInfo(spike.timezone))
    if local.hour < 1:
        return now - dt.timedelta(hours=2)
    return now


@pytest.fixture(scope="module")
def demo_loaded(django_db_setup, django_db_blocker) -> Iterator[dt.datetime]:
    """What `make run` does (scripts/run.sh), on a smaller demo, once for the module, in a
    transaction rolled back when the module is done (each test runs in a savepoint of it)."""
    with django_db_blocker.unblock(), override_settings(DEBUG=True):
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            at = _evaluation_time()
            demo_seed(days=42, accounts=DEMO_ACCOUNTS, end=at.date(), now=at)
            call_command("demo_billing", verbosity=0)
            call_command("rollup", verbosity=0)
            call_command("demo_stories", verbosity=0)
            call_command("evaluate_alerts", "--at", at.isoformat(), verbosity=0)
            # What the worker does next: push to the simulated provider (its seeded faults hit
            # the mismatch story's account only), pull its summaries, reconcile.
            call_command("push_usage", verbosity=0)
            call_command("reconcile", verbosity=0)
            yield at
        finally:
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


def _story(name: str) -> Account:
    return Account.objects.get(metadata__demo_story=name)


def _staff(role: str | None = None, superuser: bool = False):
    user = get_user_model().objects.create_user(
        f"hub-{role or 'admin'}", password="x", is_staff=True, is_superuser=superuser
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def test_after_the_demo_the_alert_queue_holds_the_alerting_stories_and_no_ordinary_account(
    demo_loaded,
):
    alerting = set(
        Alert.objects.exclude(status=Alert.Status.RESOLVED).values_list(
            "account__external_id", flat=True
        )
    )
    assert alerting == {
        _story(STORY_SPIKE).external_id,
        _story(STORY_SILENT).external_id,
        _story(STORY_NEAR_QUOTA).external_id,
    }
    kinds = {
        (a.account.metadata["demo_story"], a.kind) for a in Alert.objects.select_related("account")
    }
    assert (STORY_SPIKE, "spike") in kinds
    assert (STORY_SILENT, "drop") in kinds
    assert (STORY_NEAR_QUOTA, "quota") in kinds
    assert set(
        BillingHold.objects.filter(status="active").values_list("account__external_id", flat=True)
    ) == {_story(STORY_HOLD).external_id}


def test_after_the_demo_a_credit_waits_for_a_manager_and_the_hub_shows_it(demo_loaded):
    account = _story(STORY_CREDIT)
    waiting = Adjustment.objects.get(account=account)
    assert (waiting.kind, waiting.status) == ("credit", "requested")
    assert waiting.requested_by.username == "support"
    assert waiting.amount_minor > 100 * 10 ** currency_minor_unit(
        account.currency
    )  # above the limit
    assert set(Adjustment.objects.values_list("account_id", flat=True)) == {account.pk}
    body = _staff("Manager").get(reverse("admin:metering_account_change", args=[account.pk]))
    panel = body.content.decode().split('id="hub-adjustments"')[1].split("</div>")[0]
    assert f"Credit #{waiting.pk}" in panel and "Requested" in panel
    assert waiting.amount_text in panel


def test_after_the_demo_only_the_faulted_account_has_mismatches(demo_loaded):
    # Every account's backfilled history older than 35 days cannot be pushed (the provider's
    # limit): "too old" mismatches, a property of the 90-day backfill. Any other cause is a
    # provider fault, and only the faulted account has one.
    faulted = {
        m.account.external_id
        for m in Mismatch.objects.filter(status__in=("open", "acknowledged")).select_related(
            "account"
        )
        if {cause["code"] for cause in m.causes} - {"too_old", "billing_hold"}
    }
    assert faulted == {_story(STORY_MISMATCH).external_id}
    # The held account's usage waits in our feed: its gap is put down to the hold, not a fault.
    held = Mismatch.objects.filter(account=_story(STORY_HOLD)).exclude(top_cause="too_old")
    assert held and {m.top_cause for m in held} == {"billing_hold"}
    client = _staff("Manager")
    account = _story(STORY_MISMATCH)
    body = client.get(reverse("admin:metering_account_change", args=[account.pk])).content
    assert b'id="badge-mismatches"' in body
    assert b"Work mismatch #" in body  # a Manager works the queue


def test_the_spike_account_page_says_the_bill_is_up_and_names_the_seeded_driver(demo_loaded):
    spike = _story(STORY_SPIKE)
    client = _staff("Support")

    # The search finds one account: straight to its page.
    url = reverse("admin:metering_account_changelist")
    response = client.get(url, {"q": spike.external_id})
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:metering_account_change", args=[spike.pk])

    response = client.get(response["Location"])
    assert response.status_code == 200
    hub = response.context["hub"]
    assert hub.sentence.startswith("Up ")
    assert "compute time rose from" in hub.sentence
    assert f"mostly `instance_type={RUNAWAY_INSTANCE}`" in hub.sentence
    assert hub.invoice.change_minor > 0
    body = response.content.decode()
    assert f"<code>instance_type={RUNAWAY_INSTANCE}</code>" in body
    assert 'id="badge-alerts"' in body
    assert "Acknowledge alert #" in body  # Support may acknowledge


def test_a_search_with_several_results_stays_on_the_list(demo_loaded):
    client = _staff("Support")
    response = client.get(reverse("admin:metering_account_changelist"), {"q": "-"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == DEMO_ACCOUNTS
    response = client.get(reverse("admin:metering_account_changelist"))
    assert response.status_code == 200  # no search: the list, even with one account


def test_hub_shows_the_hold_and_the_tabs_load_as_fragments(
    demo_loaded, django_assert_max_num_queries
):
    held = _story(STORY_HOLD)
    client = _staff("Auditor")
    url = reverse("admin:metering_account_change", args=[held.pk])
    client.get(url)  # warm the session and content types
    with django_assert_max_num_queries(40):
        response = client.get(url)
    body = response.content.decode()
    assert 'id="badge-hold"' in body
    assert "Release the billing hold" not in body  # an Auditor changes nothing
    assert 'id="hub-adjustments"' in body
    for section, marker in (
        ("charts", 'id="usage-daily"'),
        ("invoice", 'id="projected-invoice"'),
        ("events", 'id="hub-recent-events"'),
    ):
        fragment = client.get(
            reverse("admin:metering_account_hub_section", args=[held.pk, section])
        )
        assert fragment.status_code == 200, section
        text = fragment.content.decode()
        assert marker in text, section
        assert "<html" not in text  # a fragment, not a page
    missing = client.get(reverse("admin:metering_account_hub_section", args=[held.pk, "nope"]))
    assert missing.status_code == 404


def test_a_staff_user_without_a_role_cannot_read_the_hub_or_its_fragments(demo_loaded):
    account = _story(STORY_SPIKE)
    client = _staff(None)
    assert client.get(reverse("admin:metering_account_change", args=[account.pk])).status_code in (
        302,
        403,
    )
    response = client.get(
        reverse("admin:metering_account_hub_section", args=[account.pk, "charts"])
    )
    assert response.status_code == 403
