"""The metering admin: pages render, the event list stays cheap, keys are shown once."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from metering.admin import EstimatedCountPaginator
from metering.api.authentication import ApiKeyAuthentication
from metering.models import Account, ApiKey, Meter, QuarantinedEvent, UsageEvent
from metering.services.api_keys import api_key_create
from metering.services.ingest import events_ingest
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

MODELS = ("account", "meter", "usageevent", "quarantinedevent", "apikey")


@pytest.fixture
def superuser_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def _role_client(django_user_model, role: str, *, username: str | None = None) -> Client:
    user = django_user_model.objects.create_user(
        username=username or role.lower(), password="x-irrelevant-9", is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def _events(account, meter, count: int, *, prefix: str = "t") -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    items = [
        {
            "transaction_id": f"{prefix}-{n}",
            "external_customer_id": account.external_id,
            "code": meter.code,
            "timestamp": (start + timedelta(minutes=n)).isoformat(),
            "properties": {"endpoint": f"/v1/e{n % 3}"},
        }
        for n in range(count)
    ]
    for offset in range(0, count, 1000):
        result = events_ingest(items=items[offset : offset + 1000], fmt="lago")
        assert result.accepted == len(items[offset : offset + 1000])


def _meter(code: str) -> Meter:
    return Meter.objects.get(code=code)


@pytest.fixture
def api_meter():
    return MeterFactory(
        code="api_calls", aggregation="count", value_property="", dimensions=["endpoint"]
    )


@pytest.fixture
def quarantined(api_meter) -> QuarantinedEvent:
    result = events_ingest(
        items=[
            {
                "transaction_id": "q-1",
                "external_customer_id": "later-co",
                "code": "api_calls",
                "timestamp": "2024-05-01T12:00:00Z",
                "properties": {"endpoint": "/v1/x"},
            }
        ],
        fmt="lago",
    )
    assert result.quarantined == 1
    return QuarantinedEvent.objects.get(transaction_id="q-1")


# --- every page renders ----------------------------------------------------------------------


def test_superuser_can_open_every_changelist_add_and_change_page(superuser_client, quarantined):
    account = AccountFactory()
    _events(account, _meter("api_calls"), 3)
    key, _raw = api_key_create(name="ci", scopes=["read"])
    objects = {
        "account": account,
        "meter": _meter("api_calls"),
        "usageevent": UsageEvent.objects.first(),
        "quarantinedevent": quarantined,
        "apikey": key,
    }
    for model in MODELS:
        changelist = superuser_client.get(reverse(f"admin:metering_{model}_changelist"))
        assert changelist.status_code == 200, model
        change = superuser_client.get(
            reverse(f"admin:metering_{model}_change", args=[objects[model].pk])
        )
        assert change.status_code == 200, model
    for model in ("account", "meter", "apikey"):
        assert superuser_client.get(reverse(f"admin:metering_{model}_add")).status_code == 200
    for model in ("account", "meter", "quarantinedevent", "apikey"):
        history = superuser_client.get(
            reverse(f"admin:metering_{model}_history", args=[objects[model].pk])
        )
        assert history.status_code == 200, model


@pytest.mark.parametrize("role", ["Auditor", "Support", "Manager"])
def test_each_role_can_open_change_pages_read_only_where_it_may_not_change(
    django_user_model, role, quarantined
):
    account = AccountFactory()
    _events(account, _meter("api_calls"), 2)
    client = _role_client(django_user_model, role)
    pages = {
        "account": account.pk,
        "meter": _meter("api_calls").pk,
        "usageevent": UsageEvent.objects.first().pk,
        "quarantinedevent": quarantined.pk,
        "apikey": api_key_create(name="svc", scopes=["read"])[0].pk,
    }
    for model, pk in pages.items():
        response = client.get(reverse(f"admin:metering_{model}_change", args=[pk]))
        assert response.status_code == 200, model
    # Events and quarantined events are read-only for every role.
    for model in ("usageevent", "quarantinedevent"):
        response = client.get(reverse(f"admin:metering_{model}_change", args=[pages[model]]))
        assert b'name="_save"' not in response.content, model


# --- usage events: append-only and cheap on a huge table -------------------------------------


def test_events_cannot_be_added_changed_or_deleted_even_by_a_superuser(superuser_client, api_meter):
    account = AccountFactory()
    _events(account, api_meter, 1)
    event = UsageEvent.objects.get()

    assert superuser_client.get(reverse("admin:metering_usageevent_add")).status_code == 403
    change_url = reverse("admin:metering_usageevent_change", args=[event.pk])
    assert b'name="_save"' not in superuser_client.get(change_url).content
    assert superuser_client.post(change_url, {"transaction_id": "x"}).status_code == 403
    delete_url = reverse("admin:metering_usageevent_delete", args=[event.pk])
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    changelist = superuser_client.get(reverse("admin:metering_usageevent_changelist"))
    # No action at all: not even delete_selected.
    assert changelist.context["action_form"] is None
    assert UsageEvent.objects.filter(pk=event.pk, transaction_id="t-0").exists()


def _changelist_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize("role", [None, "Auditor"])
def test_event_changelist_query_count_is_bounded_and_independent_of_row_count(
    django_user_model, superuser_client, api_meter, django_assert_max_num_queries, role
):
    client = superuser_client if role is None else _role_client(django_user_model, role)
    account = AccountFactory()
    url = reverse("admin:metering_usageevent_changelist")

    _events(account, api_meter, 50, prefix="a")
    with django_assert_max_num_queries(12):
        small = client.get(url)
    assert small.status_code == 200
    small_count = _changelist_queries(client, url)

    _events(account, api_meter, 450, prefix="b")
    with django_assert_max_num_queries(12):
        large = client.get(url)
    assert large.status_code == 200
    assert _changelist_queries(client, url) == small_count
    filtered = f"{url}?account__id__exact={account.pk}"
    assert _changelist_queries(client, filtered) == small_count
    # Facet counts (a COUNT per filter choice) stay off even when asked for.
    assert _changelist_queries(client, f"{url}?_facets=True") == small_count


def test_event_changelist_never_counts_the_whole_table(superuser_client, api_meter, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 20)
    _events(AccountFactory(), api_meter, 60)

    with CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(reverse("admin:metering_usageevent_changelist"))

    assert response.status_code == 200
    sql = [q["sql"] for q in captured.captured_queries if "metering_usageevent" in q["sql"]]
    counts = [s for s in sql if "COUNT(" in s.upper()]
    assert counts and all("LIMIT 21" in s for s in counts)
    assert response.context["cl"].paginator.is_estimate
    assert response.context["cl"].result_count >= 21
    assert b"estimated" in response.content


def test_estimated_paginator_offers_only_the_first_pages_past_its_bound(api_meter, monkeypatch):
    monkeypatch.setattr(EstimatedCountPaginator, "exact_up_to", 20)
    monkeypatch.setattr(EstimatedCountPaginator, "max_estimated_pages", 3)
    _events(AccountFactory(), api_meter, 60)

    paginator = EstimatedCountPaginator(UsageEvent.objects.order_by("-id"), 10)

    assert paginator.is_estimate is False  # not counted yet
    assert paginator.count >= 21
    assert paginator.is_estimate
    assert paginator.num_pages == 3
    assert len(paginator.page(3).object_list) == 10


def test_estimated_paginator_counts_exactly_below_its_bound(api_meter):
    _events(AccountFactory(), api_meter, 7)
    paginator = EstimatedCountPaginator(UsageEvent.objects.order_by("-id"), 5)
    assert paginator.count == 7
    assert not paginator.is_estimate
    assert paginator.num_pages == 2


def test_event_changelist_ignores_sorting_by_unindexed_columns(superuser_client, api_meter):
    _events(AccountFactory(), api_meter, 3)
    url = reverse("admin:metering_usageevent_changelist")

    with CaptureQueriesContext(connection) as captured:
        response = superuser_client.get(f"{url}?o=1")  # the transaction id column

    assert response.status_code == 200
    listing = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith('SELECT "metering_usageevent"."id"')
    ]
    assert len(listing) == 1
    assert listing[0].split("ORDER BY")[1].strip() == (
        '"metering_usageevent"."occurred_at" DESC, "metering_usageevent"."id" DESC'
    )


def test_event_changelist_filters_by_account_id_and_external_id(superuser_client, api_meter):
    mine = AccountFactory(external_id="mine")
    other = AccountFactory(external_id="other")
    _events(mine, api_meter, 3, prefix="m")
    _events(other, api_meter, 4, prefix="o")
    url = reverse("admin:metering_usageevent_changelist")

    by_id = superuser_client.get(f"{url}?account__id__exact={mine.pk}")
    by_external = superuser_client.get(f"{url}?account_external_id=other")

    assert {e.account_id for e in by_id.context["cl"].result_list} == {mine.pk}
    assert by_id.context["cl"].result_count == 3
    assert {e.account_id for e in by_external.context["cl"].result_list} == {other.pk}


def test_event_search_by_transaction_id_needs_an_account(superuser_client, api_meter):
    account = AccountFactory(external_id="acct")
    _events(account, api_meter, 5)
    url = reverse("admin:metering_usageevent_changelist")

    unscoped = superuser_client.get(f"{url}?q=t-3")
    scoped = superuser_client.get(f"{url}?q=t-3&account_external_id=acct")

    assert list(unscoped.context["cl"].result_list) == []
    assert "Filter by an account first" in unscoped.content.decode()
    assert [e.transaction_id for e in scoped.context["cl"].result_list] == ["t-3"]


# --- accounts --------------------------------------------------------------------------------


def test_account_search_finds_by_external_id_name_and_provider_id(superuser_client):
    AccountFactory(external_id="ext-777", name="Zebra Corp", provider_customer_id="cus_ABC")
    AccountFactory(external_id="ext-888", name="Other", provider_customer_id="cus_XYZ")
    url = reverse("admin:metering_account_changelist")

    zebra = Account.objects.get(external_id="ext-777")
    for term in ("ext-777", "Zebra", "cus_ABC"):
        # One account found: the search opens its page (the account hub).
        response = superuser_client.get(url, {"q": term})
        assert response.status_code == 302, term
        assert response["Location"] == reverse("admin:metering_account_change", args=[zebra.pk])


def test_adding_an_account_in_the_admin_makes_its_quarantined_events_replayable(
    superuser_client, quarantined
):
    response = superuser_client.post(
        reverse("admin:metering_account_add"),
        {
            "external_id": "later-co",
            "name": "Later Co",
            "timezone": "Asia/Kolkata",
            "currency": "INR",
            "tier": "growth",
            "status": "active",
            "provider_customer_id": "cus_later",
            "metadata": "{}",
        },
    )

    assert response.status_code == 302, response.content
    account = Account.objects.get(external_id="later-co")
    assert (account.timezone, account.provider_customer_id) == ("Asia/Kolkata", "cus_later")
    assert account.history.latest().history_user.is_superuser
    quarantined.refresh_from_db()
    assert quarantined.status == QuarantinedEvent.Status.REPLAYABLE


def test_account_form_rejects_an_unknown_time_zone(superuser_client):
    response = superuser_client.post(
        reverse("admin:metering_account_add"),
        {
            "external_id": "tz-bad",
            "name": "Bad zone",
            "timezone": "Mars/Olympus",
            "currency": "USD",
            "status": "active",
            "metadata": "{}",
        },
    )

    assert response.status_code == 200
    assert "timezone" in response.context["adminform"].form.errors


def test_account_form_rejects_an_unknown_currency_and_a_zone_postgresql_does_not_know(
    superuser_client, monkeypatch
):
    from metering import models

    monkeypatch.setattr(models, "postgres_timezones", lambda: frozenset({"UTC"}))
    response = superuser_client.post(
        reverse("admin:metering_account_add"),
        {
            "external_id": "bad-money",
            "name": "Bad money",
            "timezone": "Europe/Berlin",
            "currency": "ABC",
            "status": "active",
            "metadata": "{}",
        },
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors.as_data()
    assert [e.code for e in errors["currency"]] == ["invalid_currency"]
    assert [e.code for e in errors["timezone"]] == ["invalid_timezone"]
    assert not Account.objects.filter(external_id="bad-money").exists()


# --- quarantine replay -----------------------------------------------------------------------


def test_replay_action_stores_the_event_and_reports_the_outcome(superuser_client, quarantined):
    AccountFactory(external_id="later-co")

    response = superuser_client.post(
        reverse("admin:metering_quarantinedevent_changelist"),
        {"action": "replay_selected", "_selected_action": [quarantined.pk], "index": 0},
        follow=True,
    )

    assert response.status_code == 200
    quarantined.refresh_from_db()
    assert quarantined.status == QuarantinedEvent.Status.REPLAYED
    assert UsageEvent.objects.filter(transaction_id="q-1", account__external_id="later-co").exists()
    messages = [str(m) for m in response.context["messages"]]
    assert any("Replayed 1 selected" in m for m in messages), messages


def test_replay_action_is_denied_without_the_replay_permission(django_user_model, quarantined):
    AccountFactory(external_id="later-co")
    # Change rights on accounts, view on the quarantine, but no replay.
    user = django_user_model.objects.create_user(username="viewer", password="x-9", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_quarantinedevent", "view_account", "change_account"]
        )
    )
    client = Client()
    client.force_login(user)
    url = reverse("admin:metering_quarantinedevent_changelist")

    listing = client.get(url)
    response = client.post(
        url, {"action": "replay_selected", "_selected_action": [quarantined.pk], "index": 0}
    )

    assert listing.status_code == 200
    assert listing.context["action_form"] is None  # the replay action is not offered
    assert response.status_code == 403
    quarantined.refresh_from_db()
    assert quarantined.status != QuarantinedEvent.Status.REPLAYED
    assert not UsageEvent.objects.filter(transaction_id="q-1").exists()


# --- API keys --------------------------------------------------------------------------------


def test_creating_an_api_key_shows_the_raw_key_once_and_stores_only_its_hash(superuser_client):
    response = superuser_client.post(
        reverse("admin:metering_apikey_add"), {"name": "billing", "scopes": ["ingest", "read"]}
    )

    assert response.status_code == 200
    raw_key = response.context["raw_key"]
    assert raw_key.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(name="billing")
    assert key.scopes == ["ingest", "read"]
    assert key.key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    assert raw_key not in {key.prefix, key.key_hash, key.name}
    assert key.history.latest().history_user.is_superuser

    # Never again: not on the change page, the list or the history, and the hash neither.
    for url in (
        reverse("admin:metering_apikey_change", args=[key.pk]),
        reverse("admin:metering_apikey_changelist"),
        reverse("admin:metering_apikey_history", args=[key.pk]),
        reverse(
            "admin:metering_apikey_simple_history",
            args=[key.pk, key.history.earliest().history_id],
        ),
    ):
        page = superuser_client.get(url).content.decode()
        assert raw_key not in page, url
        assert key.key_hash not in page, url
    assert "messages" not in superuser_client.cookies or raw_key not in str(
        superuser_client.cookies["messages"].value
    )


def test_api_key_from_the_admin_authenticates(superuser_client, rf):
    response = superuser_client.post(
        reverse("admin:metering_apikey_add"), {"name": "svc", "scopes": ["ingest"]}
    )
    raw_key = response.context["raw_key"]

    request = rf.get("/", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    _user, key = ApiKeyAuthentication().authenticate(request)

    assert key.name == "svc"


def test_api_key_form_requires_a_scope(superuser_client):
    response = superuser_client.post(reverse("admin:metering_apikey_add"), {"name": "none"})

    assert response.status_code == 200
    assert "scopes" in response.context["adminform"].form.errors
    assert not ApiKey.objects.exists()


def test_api_key_fields_are_read_only_after_creation(superuser_client):
    key, _raw = api_key_create(name="fixed", scopes=["read"])
    url = reverse("admin:metering_apikey_change", args=[key.pk])

    response = superuser_client.post(
        url, {"name": "renamed", "scopes": ["manage"], "change_reason": "label", "prefix": "zz"}
    )

    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert (key.name, key.scopes) == ("renamed", ["read"])
    assert key.prefix != "zz"


def test_revoke_action_revokes_with_change_permission_and_is_denied_without(
    superuser_client, django_user_model
):
    key, _raw = api_key_create(name="old", scopes=["ingest"])
    url = reverse("admin:metering_apikey_changelist")
    auditor = _role_client(django_user_model, "Auditor")

    denied = auditor.post(
        url, {"action": "revoke_selected", "_selected_action": [key.pk], "index": 0}
    )
    key.refresh_from_db()
    assert denied.status_code == 403
    assert key.revoked_at is None

    done = superuser_client.post(
        url, {"action": "revoke_selected", "_selected_action": [key.pk], "index": 0}
    )
    key.refresh_from_db()
    assert done.status_code == 302
    assert key.revoked_at is not None


def test_rollup_checks_are_listed_read_only_for_auditors(client):
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from metering.models import RollupCheck

    check = RollupCheck.objects.create(
        started_at=timezone.now(),
        finished_at=timezone.now(),
        status=RollupCheck.Status.REPAIRED,
        since="2026-11-18",
        until="2026-11-21",
        buckets_checked=120,
        drifted=2,
        repaired=2,
        details={"sample": [{"bucket": "2026-11-20", "expected": "5", "found": "4"}]},
    )
    auditor = User.objects.create_user("audit-rc", password="x", is_staff=True)
    auditor.groups.add(Group.objects.get(name="Auditor"))
    client.force_login(auditor)

    listing = client.get("/admin/metering/rollupcheck/")
    assert listing.status_code == 200
    assert b"Drift repaired" in listing.content
    detail = client.get(f"/admin/metering/rollupcheck/{check.pk}/change/")
    assert detail.status_code == 200
    assert b"expected" in detail.content
    assert client.post(f"/admin/metering/rollupcheck/{check.pk}/delete/").status_code == 403
