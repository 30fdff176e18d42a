"""The audit log in the admin: who may see the log, the timeline and the export; the filters;
what the CSV and JSON Lines exports contain."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from adjustments.audit import EXPORT_FIELDS, audit_chain_verify
from adjustments.models import AuditEntry
from alerts.services import alert_acknowledge
from metering.services.accounts import account_upsert
from tests.alerts.factories import AlertFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:adjustments_auditentry_changelist"


def _staff(django_user_model, role: str | None, name: str | None = None):
    user = django_user_model.objects.create_user(
        username=name or (role or "nogroup").lower(), password="x-irrelevant-9", is_staff=True
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def history(django_user_model):
    """An account renamed by a manager, one of its alerts acknowledged, another account."""
    maya = _staff(django_user_model, "Manager", "maya")
    account, _ = account_upsert(
        external_id="acme", name="Acme", timezone="Asia/Kolkata", actor=maya, reason="signup"
    )
    account_upsert(
        external_id="acme",
        name="Acme GmbH",
        timezone="Asia/Kolkata",
        actor=maya,
        reason="legal name, ticket 42",
    )
    alert = AlertFactory(account=account)
    alert_acknowledge(alert=alert, actor=maya, reason="customer confirmed the launch")
    other, _ = account_upsert(external_id="other", name="Other", actor=None, reason="import")
    return {"account": account, "other": other, "alert": alert, "maya": maya}


def _timeline(account) -> str:
    return reverse("admin:adjustments_auditentry_timeline", args=[account.pk])


def _export(**params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return reverse("admin:adjustments_auditentry_export") + "?" + query


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


# --- permissions by role -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "log", "timeline", "export"),
    [
        ("Auditor", 200, 200, 200),
        ("Manager", 200, 200, 200),
        ("Support", 403, 200, 403),
        (None, 403, 403, 403),
    ],
)
def test_who_may_see_the_log_the_timeline_and_the_export(
    history, django_user_model, role, log, timeline, export
):
    client = _client(_staff(django_user_model, role))
    assert client.get(reverse(CHANGELIST)).status_code == log
    assert client.get(_timeline(history["account"])).status_code == timeline
    response = client.get(_export(**{"from": _today(), "to": _today(), "format": "csv"}))
    assert response.status_code == export


@pytest.mark.parametrize("role", ["Auditor", "Manager", "superuser"])
def test_nobody_may_add_change_or_delete_an_entry_superuser_included(
    history, django_user_model, role
):
    if role == "superuser":
        user = django_user_model.objects.create_superuser(username="root", password="x-9-root")
    else:
        user = _staff(django_user_model, role, f"{role}-2")
    client = _client(user)
    entry = AuditEntry.objects.order_by("seq").first()
    before = list(AuditEntry.objects.order_by("seq").values_list("seq", "hash"))

    assert client.get(reverse("admin:adjustments_auditentry_add")).status_code == 403
    change_url = reverse("admin:adjustments_auditentry_change", args=[entry.pk])
    page = client.get(change_url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.post(change_url, {"reason": "rewritten"}).status_code == 403
    delete_url = reverse("admin:adjustments_auditentry_delete", args=[entry.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403
    response = client.post(
        reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": [entry.pk]}
    )
    assert response.status_code in (200, 403)
    assert list(AuditEntry.objects.order_by("seq").values_list("seq", "hash")) == before


def test_the_account_page_links_its_timeline(history, django_user_model):
    url = reverse("admin:metering_account_change", args=[history["account"].pk])
    support = _client(_staff(django_user_model, "Support"))
    assert _timeline(history["account"]).encode() in support.get(url).content


# --- the changelist filters --------------------------------------------------------------------


def _listed(client, **params) -> set[int]:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return {entry.seq for entry in response.context["cl"].result_list}


def test_filters_by_user_reason_record_type_and_days(history, django_user_model):
    client = _client(_staff(django_user_model, "Auditor"))
    all_seqs = set(AuditEntry.objects.values_list("seq", flat=True))
    by_maya = set(AuditEntry.objects.filter(actor_label="maya").values_list("seq", flat=True))
    assert by_maya and by_maya != all_seqs

    assert _listed(client) == all_seqs
    assert _listed(client, actor="MAY") == by_maya
    assert _listed(client, reason="ticket 42") == set(
        AuditEntry.objects.filter(reason="legal name, ticket 42").values_list("seq", flat=True)
    )
    alerts = _listed(client, record="alerts.alert")
    assert alerts and {e.model for e in AuditEntry.objects.filter(seq__in=alerts)} == {"alert"}
    assert _listed(client, **{"from": _today(), "to": _today()}) == all_seqs
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    assert _listed(client, **{"from": tomorrow}) == set()
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    assert _listed(client, to=yesterday) == set()


def test_the_changelist_reads_a_fixed_number_of_queries(
    history, django_user_model, django_assert_max_num_queries
):
    client = _client(_staff(django_user_model, "Auditor"))
    client.get(reverse(CHANGELIST))
    for n in range(30):
        account_upsert(external_id=f"more-{n}", name=f"More {n}", actor=None, reason="bulk")
    with django_assert_max_num_queries(12):
        assert client.get(reverse(CHANGELIST)).status_code == 200


# --- the timeline ------------------------------------------------------------------------------


def test_the_timeline_says_who_did_what_why_and_before_after_in_time_order(
    history, django_user_model
):
    client = _client(_staff(django_user_model, "Support"))
    response = client.get(_timeline(history["account"]))
    items = response.context["timeline"]
    text = response.content.decode()

    assert [i.seq for i in items] == sorted(i.seq for i in items)
    sentences = [i.sentence for i in items]
    assert f"maya changed account {history['account'].pk}" in sentences
    assert f"maya changed alert {history['alert'].pk}" in sentences
    # Nothing of the other account.
    assert all(str(history["other"].pk) not in s.split()[-1] for s in sentences if "account" in s)
    rename = items[sentences.index(f"maya changed account {history['account'].pk}")]
    assert rename.reason == "legal name, ticket 42"
    assert [(c.field, c.before, c.after) for c in rename.changes] == [("name", "Acme", "Acme GmbH")]
    assert rename.at_utc.endswith(" UTC") and rename.at_local.endswith(" Asia/Kolkata")
    assert "customer confirmed the launch" in text
    ack = items[sentences.index(f"maya changed alert {history['alert'].pk}")]
    changes = {c.field: (c.before, c.after) for c in ack.changes}
    assert changes["status"] == ("open", "acknowledged")
    # A foreign key reads as its row, not a bare id.
    assert changes["assignee"] == ("(empty)", f"maya (#{history['maya'].pk})")


# --- the export --------------------------------------------------------------------------------


def test_the_csv_export_has_a_header_and_one_row_per_entry_in_chain_order(
    history, django_user_model
):
    client = _client(_staff(django_user_model, "Auditor"))
    response = client.get(_export(**{"from": _today(), "to": _today(), "format": "csv"}))

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert f'filename="audit-log_{_today()}_{_today()}.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert tuple(rows[0]) == EXPORT_FIELDS
    seqs = list(AuditEntry.objects.order_by("seq").values_list("seq", flat=True))
    assert [int(r[0]) for r in rows[1:]] == seqs
    by_name = [dict(zip(EXPORT_FIELDS, r, strict=True)) for r in rows[1:]]
    rename = next(r for r in by_name if r["reason"] == "legal name, ticket 42")
    assert rename["actor_label"] == "maya"
    assert json.loads(rename["before"]) == {"name": "Acme"}
    assert json.loads(rename["after"]) == {"name": "Acme GmbH"}
    assert rename["created_at"].endswith("+00:00")


def test_the_jsonl_export_is_one_json_object_per_line_with_the_chain(history, django_user_model):
    client = _client(_staff(django_user_model, "Manager", "mgr"))
    response = client.get(_export(**{"from": _today(), "to": _today(), "format": "jsonl"}))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = b"".join(response.streaming_content).decode().splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(objects) == AuditEntry.objects.count()
    assert all(set(o) == set(EXPORT_FIELDS) for o in objects)
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(objects))
    ack = next(o for o in objects if o["reason"] == "customer confirmed the launch")
    assert ack["before"]["status"] == "open" and ack["after"]["status"] == "acknowledged"
    assert audit_chain_verify()[1] is None


def test_the_export_takes_only_the_days_asked(history, django_user_model):
    client = _client(_staff(django_user_model, "Auditor"))
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    response = client.get(_export(**{"from": yesterday, "to": yesterday, "format": "jsonl"}))
    assert b"".join(response.streaming_content) == b""


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-01-02", "to": "2026-01-01", "format": "csv"},
        {"from": "yesterday", "to": "2026-01-01", "format": "csv"},
        {"from": "2026-01-01", "to": "2026-01-02", "format": "xml"},
    ],
)
def test_a_bad_export_request_is_400_with_what_to_give(history, django_user_model, params):
    client = _client(_staff(django_user_model, "Auditor"))
    response = client.get(_export(**params))
    assert response.status_code == 400
    assert b"YYYY-MM-DD" in response.content
