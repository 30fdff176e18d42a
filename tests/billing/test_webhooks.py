"""POST /webhooks/stripe: Stripe's signature scheme, tolerance, replays, invoice and meter
error events."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.models import ProviderInvoice, PushLedgerEntry, WebhookEvent
from metering.models import Meter
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec_test_secret"
URL = "/webhooks/stripe"


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> str:
    """Stripe's scheme: v1 = hex HMAC-SHA256 of "<t>.<body>" with the endpoint secret."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def post(client, body: bytes, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return client.post(URL, data=body, content_type="application/json", **headers)


def invoice_event(event_id: str = "evt_1", customer: str = "cus_acme") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.finalized",
            "api_version": "2026-10-28.endive",
            "created": 1_700_000_000,
            "livemode": False,
            "data": {
                "object": {
                    "id": "in_1",
                    "object": "invoice",
                    "customer": customer,
                    "status": "open",
                    "currency": "usd",
                    "number": "ACME-0001",
                    "total": 1234,
                    "created": 1_700_000_000,
                    "period_start": 1_697_000_000,
                    "period_end": 1_700_000_000,
                    "lines": {
                        "object": "list",
                        "has_more": False,
                        "data": [
                            {
                                "id": "il_1",
                                "amount": 1234,
                                "description": "API calls",
                                "quantity": 12,
                                "quantity_decimal": "12.340000000001",
                                "period": {"start": 1_697_000_000, "end": 1_700_000_000},
                                "pricing": {"price_details": {"price": "price_calls"}},
                            }
                        ],
                    },
                }
            },
        }
    ).encode()


def test_a_signed_invoice_event_is_stored_and_the_invoice_upserted(client):
    account = AccountFactory(external_id="hook-acme", provider_customer_id="cus_acme")
    body = invoice_event()

    response = post(client, body, signed(body))

    assert response.status_code == 200
    assert response.json() == {"received": True, "event_id": "evt_1", "duplicate": False}
    event = WebhookEvent.objects.get()
    assert event.type == "invoice.finalized" and event.outcome == "processed"
    assert event.processed_at is not None
    invoice = ProviderInvoice.objects.get(provider_invoice_id="in_1")
    assert invoice.account == account and invoice.total_minor == 1234
    assert invoice.lines.get().quantity == Decimal("12.340000000001")


def test_a_replayed_event_is_ignored(client):
    body = invoice_event()
    post(client, body, signed(body))

    again = post(client, body, signed(body))

    assert again.status_code == 200 and again.json()["duplicate"] is True
    event = WebhookEvent.objects.get()
    assert event.deliveries == 2
    assert ProviderInvoice.objects.count() == 1


def test_a_bad_signature_is_a_400_and_nothing_is_stored(client):
    body = invoice_event()

    wrong_secret = post(client, body, signed(body, secret="whsec_other"))
    tampered = post(client, body.replace(b"1234", b"9999"), signed(body))
    missing = post(client, body, None)

    assert [r.status_code for r in (wrong_secret, tampered, missing)] == [400, 400, 400]
    assert wrong_secret.json()["code"] == "invalid_webhook"
    assert not WebhookEvent.objects.exists()
    assert not ProviderInvoice.objects.exists()


def test_a_signature_older_than_the_300_second_tolerance_is_refused(client):
    body = invoice_event()

    old = post(client, body, signed(body, at=int(time.time()) - 301))
    recent = post(client, body, signed(body, at=int(time.time()) - 200))

    assert old.status_code == 400
    assert recent.status_code == 200


def test_a_signed_body_that_is_not_an_event_is_a_400(client):
    body = b'{"hello": "world"}'

    response = post(client, body, signed(body))

    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()


def test_only_post_is_accepted(client):
    assert client.get(URL).status_code == 405


def test_a_meter_error_report_marks_the_named_sent_entries(client):
    account = AccountFactory(external_id="hook-meter")
    meter = MeterFactory(code="hook_calls", aggregation=Meter.Aggregation.COUNT)
    common = {
        "provider": "stripe",
        "account": account,
        "meter": meter,
        "value": Decimal(1),
        "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
        "day": datetime(2024, 1, 1).date(),
        "status": PushLedgerEntry.Status.SENT,
    }
    for identifier in ("mo-e1", "mo-e2", "mo-e3"):
        PushLedgerEntry.objects.create(identifier=identifier, idempotency_key=identifier, **common)
    body = json.dumps(
        {
            "id": "evt_meter",
            "object": "event",
            "type": "billing.meter.error_report_triggered",
            "created": 1_700_000_000,
            "data": {
                "object": {
                    "object": "billing.meter_error_report",
                    "meter": "mtr_1",
                    "reason": {
                        "error_count": 2,
                        "error_types": [
                            {
                                "code": "timestamp_too_far_in_past",
                                "error_count": 1,
                                "sample_errors": [
                                    {"error_message": "too old", "request": {"identifier": "mo-e1"}}
                                ],
                            },
                            {
                                "code": "meter_event_customer_not_found",
                                "error_count": 1,
                                "sample_errors": [
                                    {"error_message": "who?", "request": {"identifier": "mo-e2"}}
                                ],
                            },
                        ],
                    },
                }
            },
        }
    ).encode()

    response = post(client, body, signed(body))

    assert response.status_code == 200
    statuses = dict(PushLedgerEntry.objects.values_list("identifier", "status"))
    assert statuses == {"mo-e1": "too_old", "mo-e2": "rejected", "mo-e3": "sent"}
    assert PushLedgerEntry.objects.get(identifier="mo-e2").response["webhook_event"] == "evt_meter"
    assert WebhookEvent.objects.get().outcome == "processed"


def test_a_v2_thin_meter_event_and_unknown_types_are_stored(client):
    thin = json.dumps(
        {
            "id": "evt_thin",
            "object": "v2.core.event",
            "type": "v1.billing.meter.no_meter_found",
            "created": "2024-01-01T00:00:00.000Z",
            "related_object": {"id": "mtr_1", "type": "billing.meter"},
        }
    ).encode()
    other = json.dumps({"id": "evt_other", "type": "customer.updated", "data": {}}).encode()

    assert post(client, thin, signed(thin)).status_code == 200
    assert post(client, other, signed(other)).status_code == 200

    outcomes = dict(WebhookEvent.objects.values_list("event_id", "outcome"))
    assert outcomes == {"evt_thin": "processed", "evt_other": "stored"}
