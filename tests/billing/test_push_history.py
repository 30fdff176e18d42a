"""Who changed a ledger entry outside the push's own rules, and why (issue 4, defect 6): staff
sending failed entries again, webhook reports; and the compact log of automatic sends."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import stripe

from billing.models import PushBatch, PushLedgerChange, PushLedgerEntry
from billing.services import push as push_service
from billing.services.push import ledger_retry_failed, usage_push
from billing.webhooks import webhook_event_receive
from metering.models import Meter
from tests.billing.test_push import hours_ago, make_event, make_events
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status


@pytest.fixture
def account():
    return AccountFactory(external_id="hist-acme", name="Acme")


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


def failed_entries(account, calls, n=2):
    make_events(account, calls, Decimal(1), [hours_ago(1 + i) for i in range(n)])
    push_service.push_ledger_enqueue(provider_name="simulated")
    PushLedgerEntry.objects.update(status=Status.FAILED, attempts=20, error_code="gave_up")
    return list(PushLedgerEntry.objects.order_by("pk"))


def test_the_admin_retry_action_records_the_user_and_the_reason(
    settings, admin_client, admin_user, account, calls
):
    settings.BILLING_PROVIDER = "simulated"
    entries = failed_entries(account, calls)

    response = admin_client.post(
        "/admin/billing/pushledgerentry/",
        {"action": "send_again", "_selected_action": [e.pk for e in entries]},
    )

    assert response.status_code == 302
    changes = list(PushLedgerChange.objects.order_by("entry_id"))
    assert [c.entry_id for c in changes] == [e.pk for e in entries]
    assert {c.user for c in changes} == {admin_user}
    assert {c.source for c in changes} == {PushLedgerChange.Source.STAFF}
    assert {c.reason for c in changes} == {"Send failed entries again (admin action)"}
    assert changes[0].changes["status"] == ["failed", "pending"]
    assert changes[0].changes["attempts"] == [20, 0]
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.PENDING}


def test_retrying_an_entry_that_is_not_failed_changes_and_records_nothing(
    settings, admin_user, account, calls
):
    settings.BILLING_PROVIDER = "simulated"
    entry, other = failed_entries(account, calls)
    PushLedgerEntry.objects.filter(pk=other.pk).update(status=Status.ACKNOWLEDGED)

    count = ledger_retry_failed(entry_ids=[entry.pk, other.pk], actor=admin_user, reason="ticket 7")

    assert count == 1
    assert list(PushLedgerChange.objects.values_list("entry_id", "reason")) == [
        (entry.pk, "ticket 7")
    ]


def test_a_webhook_that_rejects_a_sent_entry_records_the_event_as_the_reason(
    settings, account, calls
):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test"
    make_event(account, calls, Decimal(1), hours_ago(1))
    push_service.push_ledger_enqueue(provider_name="stripe")
    entry = PushLedgerEntry.objects.get()
    PushLedgerEntry.objects.update(status=Status.SENT)
    event = {
        "id": "evt_meter_1",
        "object": "event",
        "type": "v1.billing.meter.error_report_triggered",
        "data": {
            "reason": {
                "error_types": [
                    {
                        "code": "meter_event_value_too_many_digits",
                        "sample_errors": [
                            {
                                "error_message": "too many digits",
                                "request": {"identifier": entry.identifier},
                            }
                        ],
                    }
                ]
            }
        },
    }
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(
        f"{timestamp}.{payload.decode()}", "whsec_test"
    )

    webhook_event_receive(payload=payload, signature=f"t={timestamp},v1={signature}")

    change = PushLedgerChange.objects.get()
    assert change.entry_id == entry.pk
    assert change.source == PushLedgerChange.Source.WEBHOOK
    assert change.user is None
    assert "evt_meter_1" in change.reason
    assert change.changes["status"] == ["sent", "rejected"]


def test_each_send_leaves_one_compact_batch_row_not_one_row_per_entry(settings, account, calls):
    settings.BILLING_PROVIDER = "simulated"
    make_events(account, calls, Decimal(1), [hours_ago(1 + n / 10) for n in range(5)])

    usage_push()

    batch = PushBatch.objects.get()
    assert batch.entries == 5
    assert sum(batch.outcomes.values()) == 5
    assert not PushLedgerChange.objects.exists()
