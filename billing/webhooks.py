"""Stripe webhooks: `POST /webhooks/stripe`.

The signature (`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with
STRIPE_WEBHOOK_SECRET) is checked by the Stripe adapter with a 300-second tolerance; a bad or
missing signature, a timestamp outside the tolerance or a body that is not an event is a 400.
A verified event is stored once per event id: a replay (Stripe retries, or an attacker
resending a captured body within the tolerance) is answered 200 and changes nothing.

Handled, in the same transaction as the store:

- `invoice.*`: the invoice (and the lines the event embeds) upserted as a ProviderInvoice;
  the hourly pull completes lines an event leaves out;
- `billing.meter.error_report_triggered` and the v2 thin events `v1.billing.meter.*`: kept,
  and ledger entries named in the report's sample errors that we only knew as `sent` (v2
  stream, processed asynchronously) are marked rejected (too_old for a timestamp error).

Anything else is stored without a handler. A handler that fails rolls the whole event back and
answers 500, so Stripe delivers it again.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing.models import PushLedgerChange, PushLedgerEntry, WebhookEvent
from billing.providers.base import InvoiceData, WebhookSignatureError
from billing.providers.stripe import TOO_OLD_CODES, line_from_stripe, webhook_verify
from billing.services.pull import provider_invoice_store
from metering.models import Account

logger = logging.getLogger(__name__)

METER_ERROR_TYPES = ("billing.meter.error_report_triggered", "v1.billing.meter.")
_PART_SUFFIX = re.compile(r"\.p\d+$")


def _ts(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value not in (None, "") else None


def _handle_invoice(event: dict, now: datetime) -> str:
    invoice = (event.get("data") or {}).get("object") or {}
    if invoice.get("object") != "invoice" or not invoice.get("id"):
        return "no invoice object in the event"
    customer_id = invoice.get("customer") or ""
    account = (
        Account.objects.filter(provider_customer_id=customer_id).first() if customer_id else None
    )
    embedded = invoice.get("lines") or {}
    data = InvoiceData(
        invoice_id=invoice["id"],
        customer_id=customer_id,
        number=invoice.get("number") or "",
        status=invoice.get("status") or "",
        currency=(invoice.get("currency") or "").upper(),
        total_minor=int(invoice.get("total") or 0),
        period_start=_ts(invoice.get("period_start")),
        period_end=_ts(invoice.get("period_end")),
        created=_ts(invoice.get("created")),
        lines=[line_from_stripe(line) for line in embedded.get("data", [])],
        raw={k: v for k, v in invoice.items() if k != "lines"},
    )
    provider_invoice_store(provider_name="stripe", account=account, invoice=data, now=now)
    more = " (more lines at the next pull)" if embedded.get("has_more") else ""
    return f"invoice {data.invoice_id} stored, {len(data.lines)} line(s){more}"


def _sample_errors(report: dict) -> list[tuple[str, str, str]]:
    """(identifier, error code, message) for each sample error of a meter error report."""
    found = []
    reason = report.get("reason") or {}
    for error_type in reason.get("error_types") or []:
        code = error_type.get("code") or ""
        for sample in error_type.get("sample_errors") or []:
            request = sample.get("api_request") or sample.get("request") or {}
            identifier = request.get("identifier") or sample.get("identifier")
            if identifier:
                found.append((identifier, code, sample.get("error_message") or ""))
    return found


def _handle_meter_error(event: dict, now: datetime) -> str:
    report = (event.get("data") or {}).get("object") or event.get("data") or {}
    samples = _sample_errors(report) if isinstance(report, dict) else []
    marked = 0
    for identifier, code, message in samples:
        status = (
            PushLedgerEntry.Status.TOO_OLD
            if code in TOO_OLD_CODES
            else PushLedgerEntry.Status.REJECTED
        )
        # A part of a split value (`<identifier>.p2`) belongs to its entry.
        identifier = _PART_SUFFIX.sub("", identifier)
        entries = list(
            PushLedgerEntry.objects.select_for_update()
            .filter(provider="stripe", identifier=identifier, status=PushLedgerEntry.Status.SENT)
            .only("pk", "status", "error_code")
        )
        if not entries:
            continue
        marked += PushLedgerEntry.objects.filter(pk__in=[e.pk for e in entries]).update(
            status=status,
            error_code=code[:64],
            completed_at=now,
            response={"webhook_event": event.get("id"), "code": code, "message": message},
        )
        PushLedgerChange.objects.bulk_create(
            PushLedgerChange(
                entry_id=entry.pk,
                changed_at=now,
                source=PushLedgerChange.Source.WEBHOOK,
                reason=f"{event.get('type', '')} {event.get('id', '')}: {code}"[:255],
                changes={
                    "status": [entry.status, str(status)],
                    "error_code": [entry.error_code, code[:64]],
                },
            )
            for entry in entries
        )
    return f"meter error report: {len(samples)} sample error(s), {marked} ledger entrie(s) marked"


def webhook_event_receive(
    *, payload: bytes, signature: str, now: datetime | None = None
) -> tuple[WebhookEvent, bool]:
    """Verify, store once and handle a Stripe webhook. Returns (event, duplicate). Raises
    WebhookSignatureError for anything that is not a genuine, recent Stripe event."""
    event = webhook_verify(
        payload=payload, signature=signature, secret=settings.STRIPE_WEBHOOK_SECRET
    )
    now = now or timezone.now()
    existing = WebhookEvent.objects.filter(event_id=event["id"])
    if existing.exists():
        existing.update(deliveries=F("deliveries") + 1)
        return existing.get(), True
    try:
        with transaction.atomic():
            stored = WebhookEvent.objects.create(
                event_id=event["id"],
                type=event["type"],
                api_version=str(event.get("api_version") or "")[:64],
                livemode=bool(event.get("livemode")),
                created_at_provider=_ts(event.get("created"))
                if isinstance(event.get("created"), int)
                else None,
                payload=event,
                received_at=now,
            )
            event_type = event["type"]
            if event_type.startswith("invoice."):
                notes, outcome = _handle_invoice(event, now), WebhookEvent.Outcome.PROCESSED
            elif event_type.startswith(METER_ERROR_TYPES):
                notes, outcome = _handle_meter_error(event, now), WebhookEvent.Outcome.PROCESSED
            else:
                notes, outcome = "no handler for this type", WebhookEvent.Outcome.STORED
            stored.outcome, stored.notes, stored.processed_at = outcome, notes, now
            stored.save(update_fields=["outcome", "notes", "processed_at"])
    except IntegrityError:
        # The same event delivered twice at once: the other delivery stored it.
        existing.update(deliveries=F("deliveries") + 1)
        return existing.get(), True
    return stored, False


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event, duplicate = webhook_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
    except WebhookSignatureError as exc:
        logger.warning("Stripe webhook refused: %s", exc)
        return JsonResponse({"code": "invalid_webhook", "message": str(exc)}, status=400)
    return JsonResponse(
        {"received": True, "event_id": event.event_id, "duplicate": duplicate}, status=200
    )
