"""Customer webhook endpoints, the outbox of deliveries, and the log of every attempt."""

from __future__ import annotations

from django.db import models
from simple_history.models import HistoricalRecords


class WebhookEndpoint(models.Model):
    """Where one owner (an opaque key such as `account:42`) wants which event types sent.

    The `whsec_` secret is stored as it is, because every delivery must be signed with it: it is
    shown once (on creation or rotation) and never again, neither in the admin nor in the
    history. During a rotation's overlap the previous secret signs too.
    """

    class DisabledReason(models.TextChoices):
        NONE = "", "-"
        GONE = "gone", "The receiver answered 410 Gone"
        FAILING = "failing", "Failing for too long"

    owner_key = models.CharField(max_length=200)
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    secret = models.CharField(max_length=200)
    previous_secret = models.CharField(max_length=200, blank=True, default="")
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(
        max_length=20, choices=DisabledReason.choices, blank=True, default=""
    )
    disabled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # The secrets never reach the history (auditors read it); failing_since changes on every
    # failed delivery and is written with update(), so it is not history either.
    history = HistoricalRecords(excluded_fields=["secret", "previous_secret", "failing_since"])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner_key", "name"], name="webhook_endpoint_unique")
        ]

    def __str__(self) -> str:
        return f"{self.owner_key} / {self.name}"


class WebhookDelivery(models.Model):
    """One message to one endpoint: the outbox row. Written in the caller's transaction, sent
    later, at least once, with the same `webhook-id` (message_id) on every attempt."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted or endpoint gone)"
        CANCELLED = "cancelled", "Cancelled (endpoint disabled)"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    owner_key = models.CharField(max_length=200)
    event_type = models.CharField(max_length=100)
    idempotency_key = models.CharField(max_length=200)
    message_id = models.CharField(max_length=40, unique=True)
    # The exact JSON sent, so every attempt signs the same bytes.
    body = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Index into the retry schedule of the next wait; "Send again" starts it over.
    schedule_step = models.PositiveIntegerField(default=0)
    attempt_count = models.PositiveIntegerField(default=0)
    # The claim: a worker that set these owns the attempt until claimed_until (the lease); one
    # that dies leaves the row to be claimed again once the lease has passed.
    claimed_until = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=40, blank=True, default="")
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        permissions = [("resend_webhookdelivery", "Can send webhook deliveries again")]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "idempotency_key"], name="webhook_delivery_idempotent"
            )
        ]
        indexes = [
            # The dispatcher's question: which pending rows are due. Only pending rows indexed.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(status="pending"),
            ),
            models.Index(fields=["owner_key", "idempotency_key"], name="webhook_delivery_key"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.message_id}"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery, as it happened. Written by the dispatcher only."""

    class Outcome(models.TextChoices):
        SUCCESS = "success", "2xx"
        HTTP_ERROR = "http_error", "Error status"
        NETWORK_ERROR = "network_error", "Network error or timeout"
        REFUSED = "refused", "URL refused (not https, or a private address)"

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    attempt_number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    # At most 1 KB of the response body (or the error), for whoever debugs the receiver.
    response_excerpt = models.TextField(blank=True, default="")
    retry_after_seconds = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["delivery_id", "attempt_number", "id"]

    def __str__(self) -> str:
        return f"attempt {self.attempt_number} of {self.delivery_id}"
