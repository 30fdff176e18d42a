"""The push ledger (what we sent the provider). Events waiting to be pushed are in metering's
rolled-up feed (metering.models.RolledUpEvent)."""

from __future__ import annotations

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from billing.models.providers import Provider


class PushLedgerEntryQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)


class PushLedgerEntry(models.Model):
    """One piece of usage to push, under an identifier that is deterministic from what it is.

    - kind `event`: one usage event (or what a correction changes, see
      billing.services.push.corrections) as a value for a `sum` meter; identifier
      `mo-<installation>-e<event id>` (`mo-e<event id>` for entries made before the prefix).
    - kind `period_to_date`: the period-to-date value of a max/unique_count/latest meter for a
      `last` meter; identifier `mo-<installation>-g<account>-<meter>-<period start>-<seq>`.

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
    # Corrections only: the event the correction replaces. Its entry's value is settled from
    # what the provider holds for that event, just before it is first sent.
    corrects_event_id = models.BigIntegerField(null=True, blank=True)
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
            # A correction finds the entry of the event it corrects.
            models.Index(fields=["provider", "event"], name="push_ledger_event"),
        ]

    def __str__(self) -> str:
        return f"{self.identifier} ({self.status})"


class PushInstallation(models.Model):
    """This installation's id at the billing provider: one row (pk 1), made on first use.

    It prefixes every meter event identifier and idempotency key we send (`mo-<id>-e<event>`),
    so two installations on one Stripe account, or this one after a restore from a backup
    (which starts handing out event ids Stripe already saw), never send an identifier Stripe
    knows from within its 24-hour window (Stripe would drop the new usage as a duplicate).
    `database_oid` is the database's oid when the id was made: a dump restored into a new
    database has another oid, and the id is then renewed by itself; after a physical restore
    (same oid) run `manage.py push_installation_renew`. Ledger entries keep the identifier
    they were first sent with, so a resend never changes it.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    installation_id = models.CharField(max_length=16, unique=True)
    database_oid = models.BigIntegerField(null=True, blank=True)
    previous_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    renewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "push installation id"

    def __str__(self) -> str:
        return self.installation_id


class PushLedgerChange(models.Model):
    """A change made to ledger entries by a person or on the provider's word: who, why, what.

    The ledger has one row per event, so its automatic transitions (each send's answer) are
    recorded in the entry's own fields (attempts, first and last attempt, the provider's last
    answer) and per send in PushBatch, not here: a full history row per automatic change would
    double the ledger's writes. What is recorded here are the changes outside the push's own
    rules: staff sending failed entries again (with the user) and webhook reports that change
    an entry's status (with the webhook event).
    """

    class Source(models.TextChoices):
        STAFF = "staff", "Staff"
        WEBHOOK = "webhook", "Provider webhook"

    entry = models.ForeignKey(PushLedgerEntry, on_delete=models.CASCADE, related_name="changes")
    changed_at = models.DateTimeField()
    source = models.CharField(max_length=16, choices=Source.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.CharField(max_length=255)
    # {"field": [before, after], ...}
    changes = models.JSONField(default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = "push ledger change"
        indexes = [models.Index(fields=["entry", "changed_at"], name="push_change_entry")]

    def __str__(self) -> str:
        return f"{self.entry_id} {self.changes.get('status', '')} ({self.source})"


class PushBatch(models.Model):
    """One send of a chunk of ledger entries: when, how many, what the provider answered. The
    compact log of the ledger's automatic transitions."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    sent_at = models.DateTimeField()
    entries = models.PositiveIntegerField()
    first_entry_id = models.BigIntegerField()
    last_entry_id = models.BigIntegerField()
    # Entries by the status the answer gave them ({"acknowledged": 990, "pending": 10}).
    outcomes = models.JSONField(default=dict)
    halted = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name = "push batch"
        verbose_name_plural = "push batches"
        indexes = [models.Index(fields=["sent_at"], name="push_batch_sent")]

    def __str__(self) -> str:
        return f"{self.provider} {self.sent_at:%Y-%m-%d %H:%M:%S} ({self.entries})"
