"""Notifications: e-mail, the team webhook, and signed customer webhooks through an outbox.

Customer webhooks follow the Standard Webhooks specification (see signing.py). A caller
enqueues inside its own business transaction (`webhook_enqueue`): one outbox row per enabled
endpoint of the owner subscribed to the event type, idempotent on the caller's key. Rows are
sent by `webhook_deliveries_dispatch` (queued when that transaction commits, and every minute),
at least once, with the same `webhook-id` on every attempt, on the schedule RETRY_SCHEDULE.

A worker claims a row with a compare-and-set (a lease: `claimed_until`, and a token that only
the claimer's result may clear), sends, then records the attempt. A worker that dies between
the claim and the record leaves the row to be claimed again once the lease has passed: the
receiver may then see the same `webhook-id` twice, which at-least-once allows and the spec
tells receivers to deduplicate on. Such a crashed attempt does not advance the schedule.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import re
import time
import uuid

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from notifications.outbound_http import (
    EXCERPT_BYTES,
    CheckedUrl,
    HttpResult,
    UrlRefused,
    post_checked,
    url_check,
)
from notifications.signals import webhook_endpoint_disabled
from notifications.signing import webhook_headers, webhook_secret_generate

logger = logging.getLogger(__name__)

# The wait before each attempt: the first at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 14 h, 20 h and 24 h (ten attempts over about three days). `Retry-After` on a 429 or 503 waits
# longer when it asks to (up to RETRY_AFTER_MAX).
RETRY_SCHEDULE: tuple[dt.timedelta, ...] = (
    dt.timedelta(0),
    dt.timedelta(seconds=5),
    dt.timedelta(minutes=5),
    dt.timedelta(minutes=30),
    dt.timedelta(hours=2),
    dt.timedelta(hours=5),
    dt.timedelta(hours=10),
    dt.timedelta(hours=14),
    dt.timedelta(hours=20),
    dt.timedelta(hours=24),
)
RETRY_AFTER_MAX = dt.timedelta(hours=24)
RETRY_AFTER_STATUSES = frozenset({429, 503})
# An endpoint whose deliveries have failed without a success for this long is disabled.
DISABLE_AFTER_FAILING = dt.timedelta(days=5)
# How long a claim lasts: well above one attempt's worst case (5 s connect + 10 s exchange).
CLAIM_LEASE = dt.timedelta(seconds=60)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_EVENT_TYPE_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


class NotificationFailed(Exception):
    """A team notification could not be delivered (the message says why)."""


# --- endpoints -------------------------------------------------------------------------------


def webhook_endpoint_validate(*, name: str, url: str, event_types: list[str]) -> None:
    """Raise ValidationError (keyed by field) unless the endpoint's fields follow the rules.
    The URL rules (https, public addresses only) are relaxed by WEBHOOK_ALLOW_PRIVATE."""
    errors: dict[str, list[str]] = {}
    if not isinstance(name, str) or not _NAME_RE.match(name):
        errors["name"] = [
            "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit."
        ]
    try:
        # In production the host is resolved (the rule is about its addresses); in
        # development a name that does not resolve yet may be saved.
        url_check(url, resolve=not settings.WEBHOOK_ALLOW_PRIVATE)
    except UrlRefused as exc:
        errors["url"] = [str(exc)]
    if (
        not isinstance(event_types, list)
        or not event_types
        or not all(
            isinstance(t, str) and len(t) <= 100 and _EVENT_TYPE_RE.match(t) for t in event_types
        )
    ):
        errors["event_types"] = [
            "A non-empty list of event types such as 'usage.spike' (lower case, dot-separated)."
        ]
    if errors:
        raise ValidationError(errors)


def webhook_endpoint_upsert(
    *,
    owner_key: str,
    name: str,
    url: str,
    event_types: list[str],
    enabled: bool,
    actor=None,
    reason: str | None = None,
) -> tuple[WebhookEndpoint, str | None, bool]:
    """Create or update the owner's endpoint called `name`. Returns (endpoint, the new `whsec_`
    secret on creation else None, created). The secret is never returned again; rotate it to
    get a new one. Re-enabling clears the failure state; disabling cancels pending deliveries."""
    webhook_endpoint_validate(name=name, url=url, event_types=event_types)
    event_types = list(dict.fromkeys(event_types))
    now = timezone.now()
    with transaction.atomic():
        endpoint = (
            WebhookEndpoint.objects.select_for_update()
            .filter(owner_key=owner_key, name=name)
            .first()
        )
        if endpoint is None:
            secret = webhook_secret_generate()
            candidate = WebhookEndpoint(
                owner_key=owner_key,
                name=name,
                url=url,
                event_types=event_types,
                enabled=enabled,
                secret=secret,
                disabled_at=None if enabled else now,
            )
            candidate._history_user = actor
            candidate._change_reason = reason or "created"
            try:
                # A savepoint: a concurrent create of the same name wins, and this becomes an
                # update of its row.
                with transaction.atomic():
                    candidate.save()
                return candidate, secret, True
            except IntegrityError:
                endpoint = WebhookEndpoint.objects.select_for_update().get(
                    owner_key=owner_key, name=name
                )
        changed = endpoint.url != url or endpoint.event_types != event_types
        endpoint.url = url
        endpoint.event_types = event_types
        if enabled and not endpoint.enabled:
            endpoint.enabled = True
            endpoint.failing_since = None
            endpoint.disabled_reason = WebhookEndpoint.DisabledReason.NONE
            endpoint.disabled_at = None
            changed = True
        elif not enabled and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_reason = WebhookEndpoint.DisabledReason.NONE
            endpoint.disabled_at = now
            _deliveries_cancel_pending(endpoint)
            changed = True
        if changed:
            endpoint._history_user = actor
            endpoint._change_reason = reason or "updated"
            endpoint.save()
    return endpoint, None, False


def webhook_endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, overlap_hours: int = 24, actor=None
) -> str:
    """Give the endpoint a new `whsec_` secret and return it (shown once). For `overlap_hours`
    the old secret signs too (both signatures in `webhook-signature`), so the receiver can
    switch without losing a message. A second rotation within an overlap drops the oldest."""
    if overlap_hours < 0:
        raise ValueError("overlap_hours must be 0 or more")
    secret = webhook_secret_generate()
    now = timezone.now()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if overlap_hours:
            locked.previous_secret = locked.secret
            locked.previous_secret_expires_at = now + dt.timedelta(hours=overlap_hours)
        else:
            locked.previous_secret = ""
            locked.previous_secret_expires_at = None
        locked.secret = secret
        locked._history_user = actor
        locked._change_reason = f"secret rotated ({overlap_hours} h overlap)"
        locked.save()
    for field in ("secret", "previous_secret", "previous_secret_expires_at", "updated_at"):
        setattr(endpoint, field, getattr(locked, field))
    return secret


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor=None) -> None:
    """Delete the endpoint with its deliveries and their attempts (the history keeps a record
    of the endpoint, with who deleted it)."""
    endpoint._history_user = actor
    endpoint._change_reason = "deleted"
    endpoint.delete()


def _deliveries_cancel_pending(endpoint: WebhookEndpoint) -> int:
    return WebhookDelivery.objects.filter(
        endpoint=endpoint, status=WebhookDelivery.Status.PENDING
    ).update(
        status=WebhookDelivery.Status.CANCELLED,
        next_attempt_at=None,
        claimed_until=None,
        claim_token="",
    )


def _endpoint_disable(*, endpoint: WebhookEndpoint, reason: str, now: dt.datetime) -> None:
    """Disable (inside the caller's transaction, row locked), cancel what is pending, and tell
    the CS team once the transaction commits: e-mail to NOTIFY_TEAM_EMAIL and the
    `webhook_endpoint_disabled` signal for the apps above."""
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    endpoint._change_reason = (
        "disabled: the receiver answered 410 Gone"
        if reason == WebhookEndpoint.DisabledReason.GONE
        else f"disabled: failing since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC"
    )
    endpoint.save()
    _deliveries_cancel_pending(endpoint)

    def tell() -> None:
        if settings.NOTIFY_TEAM_EMAIL:
            email_notify(
                to=[settings.NOTIFY_TEAM_EMAIL],
                subject=f"Webhook endpoint disabled: {endpoint}",
                body=(
                    f"The webhook endpoint {endpoint.name!r} of {endpoint.owner_key} "
                    f"({endpoint.url}) was disabled: {endpoint._change_reason}.\n"
                    "Its pending deliveries were cancelled. Once the customer has fixed the "
                    "receiver, enable the endpoint again and send the deliveries again from "
                    "the admin."
                ),
            )
        webhook_endpoint_disabled.send(sender=WebhookEndpoint, endpoint=endpoint, reason=reason)

    transaction.on_commit(tell, robust=True)


# --- the outbox ------------------------------------------------------------------------------


def _dispatch_soon() -> None:
    from notifications.tasks import webhook_deliveries_dispatch as task

    task.delay()


def webhook_enqueue(
    *, owner_key: str, event_type: str, payload: dict, idempotency_key: str
) -> list[WebhookDelivery]:
    """Write one outbox row per enabled endpoint of `owner_key` subscribed to `event_type`, in
    the caller's transaction; they are sent once it commits. The body is Standard Webhooks'
    `{"type", "timestamp", "data": payload}`. The same `idempotency_key` for the same owner
    again writes nothing and returns the rows written the first time."""
    existing = list(
        WebhookDelivery.objects.filter(owner_key=owner_key, idempotency_key=idempotency_key)
    )
    if existing:
        return existing
    now = timezone.now()
    body = json.dumps(
        {
            "type": event_type,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": payload,
        },
        cls=DjangoJSONEncoder,
        separators=(",", ":"),
    )
    endpoints = WebhookEndpoint.objects.filter(
        owner_key=owner_key, enabled=True, event_types__contains=[event_type]
    ).order_by("pk")
    rows = [
        WebhookDelivery(
            endpoint=endpoint,
            owner_key=owner_key,
            event_type=event_type,
            idempotency_key=idempotency_key,
            message_id=f"msg_{uuid.uuid4().hex}",
            body=body,
            next_attempt_at=now,
        )
        for endpoint in endpoints
    ]
    if not rows:
        return []
    # A concurrent enqueue with the same key: the unique (endpoint, key) keeps one row each.
    WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    transaction.on_commit(_dispatch_soon, robust=True)
    return list(
        WebhookDelivery.objects.filter(
            owner_key=owner_key, idempotency_key=idempotency_key
        ).order_by("pk")
    )


def webhook_delivery_resend(*, delivery: WebhookDelivery, actor=None, now=None) -> bool:
    """Send a delivery again (same `webhook-id`), on a fresh retry schedule. False when its
    endpoint is disabled or an attempt is in flight."""
    now = now or timezone.now()
    if not WebhookEndpoint.objects.filter(pk=delivery.endpoint_id, enabled=True).exists():
        return False
    updated = (
        WebhookDelivery.objects.filter(pk=delivery.pk)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .update(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at=now,
            schedule_step=0,
            claimed_until=None,
            claim_token="",
        )
    )
    if updated:
        logger.info("webhook delivery %s queued again by %s", delivery.message_id, actor)
        transaction.on_commit(_dispatch_soon, robust=True)
    return bool(updated)


def webhook_deliveries_dispatch(*, now=None, limit: int = 100) -> int:
    """Send up to `limit` due deliveries; returns how many were attempted. Safe to run in any
    number of workers at once: each row is claimed by a compare-and-set first."""
    now = now or timezone.now()
    due = list(
        WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at__lte=now,
            endpoint__enabled=True,
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    attempted = 0
    for pk in due:
        claim = _delivery_claim(pk=pk, now=now)
        if claim is None:
            continue
        delivery, token = claim
        _delivery_attempt(delivery=delivery, token=token, now=now)
        attempted += 1
    return attempted


def _delivery_claim(*, pk: int, now: dt.datetime) -> tuple[WebhookDelivery, str] | None:
    """The compare-and-set: only one worker's UPDATE matches a free, due row."""
    token = uuid.uuid4().hex
    claimed = (
        WebhookDelivery.objects.filter(
            pk=pk, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .update(
            claimed_until=now + CLAIM_LEASE,
            claim_token=token,
            attempt_count=F("attempt_count") + 1,
        )
    )
    if not claimed:
        return None
    return WebhookDelivery.objects.select_related("endpoint").get(pk=pk), token


def _delivery_attempt(*, delivery: WebhookDelivery, token: str, now: dt.datetime) -> None:
    endpoint = delivery.endpoint
    signing_secrets = [endpoint.secret]
    if endpoint.previous_secret and (
        endpoint.previous_secret_expires_at and endpoint.previous_secret_expires_at > now
    ):
        signing_secrets.append(endpoint.previous_secret)
    started_at = timezone.now()
    clock = time.monotonic()
    result: HttpResult | None = None
    outcome = WebhookAttempt.Outcome.SUCCESS
    excerpt = ""
    try:
        checked: CheckedUrl = url_check(endpoint.url)
        # Signed at send time: receivers reject timestamps more than 5 minutes off.
        headers = webhook_headers(
            message_id=delivery.message_id,
            timestamp=started_at,
            body=delivery.body,
            secrets_=signing_secrets,
        )
        result = post_checked(checked, content=delivery.body.encode("utf-8"), headers=headers)
        excerpt = result.excerpt
        if not 200 <= result.status_code < 300:
            outcome = WebhookAttempt.Outcome.HTTP_ERROR
    except UrlRefused as exc:
        outcome, excerpt = WebhookAttempt.Outcome.REFUSED, str(exc)
    except httpx.HTTPError as exc:
        outcome, excerpt = WebhookAttempt.Outcome.NETWORK_ERROR, f"{type(exc).__name__}: {exc}"
    duration_ms = int((time.monotonic() - clock) * 1000)
    _delivery_record(
        delivery=delivery,
        token=token,
        now=now,
        started_at=started_at,
        duration_ms=duration_ms,
        outcome=outcome,
        result=result,
        excerpt=excerpt,
    )


def retry_after_parse(value: str | None, *, now: dt.datetime) -> dt.timedelta | None:
    """`Retry-After` as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return dt.timedelta(seconds=int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(when - now, dt.timedelta(0))


def _delivery_record(
    *,
    delivery: WebhookDelivery,
    token: str,
    now: dt.datetime,
    started_at: dt.datetime,
    duration_ms: int,
    outcome: str,
    result: HttpResult | None,
    excerpt: str,
) -> None:
    """Log the attempt and move the row on, unless the claim was lost meanwhile (then the
    attempt is only logged: the row belongs to whoever holds it now)."""
    status_code = result.status_code if result else None
    retry_after = None
    if result is not None and status_code in RETRY_AFTER_STATUSES:
        retry_after = retry_after_parse(result.headers.get("retry-after"), now=now)
        if retry_after is not None:
            retry_after = min(retry_after, RETRY_AFTER_MAX)
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            attempt_number=delivery.attempt_count,
            started_at=started_at,
            duration_ms=duration_ms,
            outcome=outcome,
            status_code=status_code,
            response_excerpt=excerpt.encode("utf-8")[:EXCERPT_BYTES].decode(
                "utf-8", errors="ignore"
            ),
            retry_after_seconds=int(retry_after.total_seconds()) if retry_after else None,
        )
        row = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        if row.claim_token != token:
            return
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=row.endpoint_id)
        row.claimed_until = None
        row.claim_token = ""
        row.last_status_code = status_code
        if outcome == WebhookAttempt.Outcome.SUCCESS:
            row.status = WebhookDelivery.Status.DELIVERED
            row.delivered_at = now
            row.next_attempt_at = None
            if endpoint.failing_since is not None:
                WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None)
        elif status_code == 410:
            row.status = WebhookDelivery.Status.FAILED
            row.next_attempt_at = None
            if endpoint.enabled:
                _endpoint_disable(
                    endpoint=endpoint, reason=WebhookEndpoint.DisabledReason.GONE, now=now
                )
        else:
            row.schedule_step += 1
            if row.schedule_step >= len(RETRY_SCHEDULE):
                row.status = WebhookDelivery.Status.FAILED
                row.next_attempt_at = None
            else:
                wait = RETRY_SCHEDULE[row.schedule_step]
                if retry_after is not None:
                    wait = max(wait, retry_after)
                row.next_attempt_at = now + wait
            if endpoint.failing_since is None:
                WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=now)
            elif endpoint.enabled and now - endpoint.failing_since >= DISABLE_AFTER_FAILING:
                _endpoint_disable(
                    endpoint=endpoint, reason=WebhookEndpoint.DisabledReason.FAILING, now=now
                )
                # Like the endpoint's other pending rows (cancelled by the disabling).
                row.status = WebhookDelivery.Status.CANCELLED
                row.next_attempt_at = None
        row.save(
            update_fields=[
                "claimed_until",
                "claim_token",
                "last_status_code",
                "status",
                "delivered_at",
                "next_attempt_at",
                "schedule_step",
            ]
        )


# --- team notifications ----------------------------------------------------------------------


def email_notify(*, to: list[str], subject: str, body: str) -> None:
    """Send a plain-text e-mail through Django's backend (the console in development, SMTP in
    production). Nobody to send to: nothing happens. SMTP errors propagate."""
    recipients = [address for address in to if address]
    if not recipients:
        return
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)


def team_webhook_notify(*, url: str, text: str) -> None:
    """POST `{"text": text}` (Slack-compatible) to the team's webhook, under the same URL rules
    as customer webhooks. Raises NotificationFailed unless the answer is 2xx."""
    try:
        checked = url_check(url)
        result = post_checked(checked, content=json.dumps({"text": text}).encode(), headers={})
    except (UrlRefused, httpx.HTTPError) as exc:
        raise NotificationFailed(f"team webhook not sent: {exc}") from exc
    if not 200 <= result.status_code < 300:
        raise NotificationFailed(
            f"team webhook answered {result.status_code}: {result.excerpt[:200]}"
        )
