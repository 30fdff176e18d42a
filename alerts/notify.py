"""The one door from alerts to the notification transports (the `notifications` app).

`notifications.services` is imported lazily: when the app is not installed, a request is logged
and recorded but not handed over. Every request is recorded as an AlertNotification row first,
unique by (channel, idempotency key), so an evaluation that runs twice asks once; the transport
is called after the alert's transaction commits.
"""

from __future__ import annotations

import importlib
import logging

from django.conf import settings
from django.db import IntegrityError, transaction

from alerts.models import Alert, AlertNotification, AlertRule, BillingHold

logger = logging.getLogger(__name__)

EVENT_TYPES = {
    "spike": "usage.spike",
    "drop": "usage.drop",
    "invoice": "invoice.projected_threshold",
    "quota": "quota.threshold",
}
HOLD_EVENT = "account.billing_hold"
# Every event type a customer's endpoint may subscribe to (the webhook-endpoints API checks).
WEBHOOK_EVENT_TYPES = (*EVENT_TYPES.values(), HOLD_EVENT)
# The CS team's warning that held usage nears the provider's 35-day window (not a customer
# webhook).
HOLD_WINDOW_EVENT = "billing_hold.window"


def transports():
    """notifications.services, or None when the app is absent."""
    try:
        return importlib.import_module("notifications.services")
    except ImportError:
        return None


def owner_key(account_id: int) -> str:
    return f"account:{account_id}"


def alert_payload(alert: Alert) -> dict:
    def text(value):
        return None if value is None else str(value)

    return {
        "alert_id": alert.pk,
        "account": alert.account.external_id,
        "meter": alert.meter.code if alert.meter_id else None,
        "kind": alert.kind,
        "level": alert.get_level_display().lower(),
        "day": alert.day.isoformat(),
        "observed": text(alert.observed),
        "baseline": text(alert.baseline),
        "multiple": text(alert.multiple),
        "period_usage": text(alert.period_usage),
        "previous_period_usage": text(alert.previous_period_usage),
        "projected_invoice_minor": alert.projected_invoice_minor,
        "currency": alert.currency or None,
        "message": alert.message,
    }


def _record(**fields) -> AlertNotification | None:
    try:
        with transaction.atomic():
            return AlertNotification.objects.create(**fields)
    except IntegrityError:
        return None  # asked already


def _send(row: AlertNotification) -> None:
    services = transports()
    if services is None:
        logger.info(
            "notifications app absent: %s %s not sent (%s)",
            row.channel,
            row.event_type,
            row.idempotency_key,
        )
        return
    if row.channel == AlertNotification.Channel.WEBHOOK:
        services.webhook_enqueue(
            owner_key=row.recipient,
            event_type=row.event_type,
            payload=row.payload,
            idempotency_key=row.idempotency_key,
        )
    elif row.channel == AlertNotification.Channel.EMAIL:
        services.email_notify(
            to=[a for a in row.recipient.split(",") if a],
            subject=row.payload["subject"],
            body=row.payload["body"],
        )
    else:
        services.team_webhook_notify(url=row.recipient, text=row.payload["text"])
    AlertNotification.objects.filter(pk=row.pk).update(handed_over=True)


def _ask(**fields) -> AlertNotification | None:
    row = _record(**fields)
    if row is None:
        return None
    if row.channel == AlertNotification.Channel.WEBHOOK:
        # A customer webhook goes into the notifications outbox in this very transaction (the
        # outbox delivers at least once and queues its dispatch on commit): a crash right
        # after the alert commits cannot lose it.
        _send(row)
    else:
        # E-mail and the team webhook are sent directly, so only once the alert has committed.
        # Robust: an SMTP server or a team webhook that is down must not fail the evaluation
        # (the row stays with handed_over false, and the alert is in the admin queue anyway).
        transaction.on_commit(lambda: _send(row), robust=True)
    return row


def cs_recipients(rule: AlertRule, account) -> list[str]:
    """Who is e-mailed about an alert: the rule's own addresses; else the account's CS owner
    (`metadata.cs_owner_email`); else the CS team's address (NOTIFY_TEAM_EMAIL); else nobody."""
    emails = [e.strip() for e in rule.email_to.split(",") if e.strip()]
    if emails:
        return emails
    cs_owner = (account.metadata or {}).get("cs_owner_email")
    if isinstance(cs_owner, str) and cs_owner.strip():
        return [cs_owner.strip()]
    team = settings.NOTIFY_TEAM_EMAIL.strip()
    return [team] if team else []


def team_webhook_url(rule: AlertRule) -> str:
    """The Slack-compatible team webhook: the rule's own, else NOTIFY_TEAM_WEBHOOK_URL."""
    return rule.team_webhook_url or settings.NOTIFY_TEAM_WEBHOOK_URL


def alert_notify(alert: Alert, *, what: str) -> list[AlertNotification]:
    """Ask every channel the alert's rule names to tell of `what` ("opened", "escalated")
    at the alert's current level. Idempotent per alert, level and channel."""
    rule, account = alert.rule, alert.account
    key = f"alert:{alert.pk}:level:{alert.level}"
    subject = (
        f"[{alert.get_level_display()}] {alert.get_kind_display()} {what}: "
        f"{account.name or account.external_id}"
    )
    body = f"{alert.message}\n\nAccount {account.external_id}, alert #{alert.pk}."
    rows = []
    if rule.notify_customer:
        rows.append(
            _ask(
                alert=alert,
                channel=AlertNotification.Channel.WEBHOOK,
                event_type=EVENT_TYPES[alert.kind],
                recipient=owner_key(account.pk),
                idempotency_key=key,
                payload=alert_payload(alert),
            )
        )
    emails = cs_recipients(rule, account)
    if emails:
        rows.append(
            _ask(
                alert=alert,
                channel=AlertNotification.Channel.EMAIL,
                event_type=EVENT_TYPES[alert.kind],
                recipient=",".join(emails),
                idempotency_key=key,
                payload={"subject": subject, "body": body},
            )
        )
    team_url = team_webhook_url(rule)
    if team_url:
        rows.append(
            _ask(
                alert=alert,
                channel=AlertNotification.Channel.TEAM_WEBHOOK,
                event_type=EVENT_TYPES[alert.kind],
                recipient=team_url,
                idempotency_key=key,
                payload={"text": f"{subject}\n{alert.message}"},
            )
        )
    return [row for row in rows if row is not None]


def billing_hold_notify(hold: BillingHold, *, what: str) -> AlertNotification | None:
    """Tell the customer's endpoints (and so the product) that billing is held or released."""
    return _ask(
        alert=hold.alert,
        channel=AlertNotification.Channel.WEBHOOK,
        event_type=HOLD_EVENT,
        recipient=owner_key(hold.account_id),
        idempotency_key=f"hold:{hold.pk}:{what}",
        payload={
            "account": hold.account.external_id,
            "status": hold.status,
            "held_since": hold.opened_at.isoformat(),
            "reason": hold.reason,
            "alert_id": hold.alert_id,
        },
    )


def billing_hold_window_notify(hold: BillingHold, *, oldest, at) -> list[AlertNotification]:
    """Tell the CS team (e-mail to NOTIFY_TEAM_EMAIL, the rule's addresses or the account's
    CS owner; the rule's team webhook) that a hold keeps back usage nearing the provider's
    window for past usage (Stripe's 35 days, Orb's grace period). Once per hold and channel
    (the idempotency key)."""
    from alerts.selectors import provider_window, window_text

    account = hold.account
    rule = hold.alert.rule if hold.alert_id else None
    age_days = (at - oldest).days
    window = provider_window()
    if window is None:  # the platform takes usage of any age
        return []
    deadline = oldest + window
    subject = f"[Billing hold] usage held {age_days} days: {account.name or account.external_id}"
    text = (
        f"The billing hold on {account.external_id} (since {hold.opened_at:%Y-%m-%d %H:%M} UTC) "
        f"keeps back usage from {oldest:%Y-%m-%d %H:%M} UTC, {age_days} days ago. The billing "
        f"provider refuses usage older than its {window_text(window)} window: release the "
        f"hold before "
        f"{deadline:%Y-%m-%d %H:%M} UTC or that usage is never billed."
    )
    key = f"hold:{hold.pk}:window"
    emails = [e.strip() for e in (rule.email_to if rule else "").split(",") if e.strip()]
    cs_owner = (account.metadata or {}).get("cs_owner_email")
    if not emails and isinstance(cs_owner, str) and cs_owner:
        emails = [cs_owner]
    team = getattr(settings, "NOTIFY_TEAM_EMAIL", "")
    if team and team not in emails:
        emails.append(team)
    rows = []
    if emails:
        rows.append(
            _ask(
                alert=hold.alert,
                channel=AlertNotification.Channel.EMAIL,
                event_type=HOLD_WINDOW_EVENT,
                recipient=",".join(emails),
                idempotency_key=key,
                payload={"subject": subject, "body": text},
            )
        )
    if rule and rule.team_webhook_url:
        rows.append(
            _ask(
                alert=hold.alert,
                channel=AlertNotification.Channel.TEAM_WEBHOOK,
                event_type=HOLD_WINDOW_EVENT,
                recipient=rule.team_webhook_url,
                idempotency_key=key,
                payload={"text": f"{subject}\n{text}"},
            )
        )
    return [row for row in rows if row is not None]
