"""Webhook events received from a billing provider."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from billing.models.providers import Provider


class WebhookEvent(models.Model):
    """A verified provider webhook, stored once per event id (replays are ignored)."""

    class Outcome(models.TextChoices):
        PROCESSED = "processed", "Processed"
        STORED = "stored", "Stored (no handler)"
        FAILED = "failed", "Failed"

    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.STRIPE)
    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=255, db_index=True)
    api_version = models.CharField(max_length=64, blank=True)
    livemode = models.BooleanField(default=False)
    created_at_provider = models.DateTimeField(null=True, blank=True)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    notes = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=1, help_text="Times it was delivered.")

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} ({self.event_id})"
