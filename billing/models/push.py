"""The push ledger (what we sent the provider). Events waiting to be pushed are in metering's
rolled-up feed (metering.models.RolledUpEvent)."""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from billing.models.providers import Provider


class PushLedgerEntryQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)


class PushLedgerEntry(models.Model):
    """One piece of usage to push, under an identifier that is deterministic from what it is.

    - kind `event`: one usage event (or a correction's delta) as a value for a `sum` meter;
      identifier `mo-e<event id>`.
    - kind `period_to_date`: the period-to-date value of a max/unique_count/latest meter for a
      `last` meter; identifier `mo-g<account>-<meter>-<period start>-<seq>`.

    `payload` is exactly what is sent, fixed at the first attempt; every retry reuses it with
    the same identifier and idempotency key.
    """

    class Kind(models.TextChoices):
        EVENT = "event", "Event value (sum meter)"
        PERIOD_TO_DATE = "period_to_date", "Period-to-date value (last meter)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent (accepted, processed asynchronously)"
        ACKNOWLEDGED = "acknowledged", "Acknowledged (recorded by the provider)"
        FAILED = "failed", "Failed (needs a person)"
        TOO_OLD = "too_old", "Too old for the provider (not sent)"
        REJECTED = "rejected", "Rejected by the provider"
        SUPERSEDED = "superseded", "Superseded by a newer period-to-date value"

    DONE = (Status.SENT, Status.ACKNOWLEDGED)

    provider = models.CharField(max_length=16, choices=Provider.choices)
    identifier = models.CharField(max_length=100)
    idempotency_key = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.EVENT)
    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="push_ledger_entries"
    )
    meter = models.ForeignKey(
        "metering.Meter", on_delete=models.PROTECT, related_name="push_ledger_entries"
    )
    # The event pushed (kind `event`); events are never deleted.
    event = models.ForeignKey(
        "metering.UsageEvent",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    value = models.DecimalField(max_digits=38, decimal_places=12)
    # The usage time sent to the provider, and its UTC day (provider summaries are UTC days).
    timestamp = models.DateTimeField()
    day = models.DateField(help_text="UTC day of the timestamp.")
    # Period-to-date entries: the billing period's first local day and the value's sequence.
    period_start = models.DateField(null=True, blank=True)
    seq = models.PositiveIntegerField(default=0)
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    first_sent_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    # The provider's last answer (or why we did not send).
    response = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    objects = PushLedgerEntryQuerySet.as_manager()

    class Meta:
        verbose_name = "push ledger entry"
        verbose_name_plural = "push ledger"
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "identifier"], name="push_ledger_identifier_unique"
            ),
        ]
        indexes = [
            models.Index(
                fields=["provider", "id"],
                condition=models.Q(status="pending"),
                name="push_ledger_pending",
            ),
            models.Index(fields=["account", "meter", "day"], name="push_ledger_acct_day"),
            models.Index(
                fields=["account", "meter", "period_start", "seq"], name="push_ledger_gauge"
            ),
            models.Index(fields=["status", "created_at"], name="push_ledger_status"),
        ]

    def __str__(self) -> str:
        return f"{self.identifier} ({self.status})"
