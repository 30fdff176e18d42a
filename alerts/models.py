"""Alert rules, the alerts they open, what was asked of the notification transports, and
billing holds.

Rules are scoped globally, to a tier or to one account, and to one meter or all; for each
(kind, meter) the most specific rule applies (account over tier over global, a meter's own rule
over an all-meters rule at the same scope), so a disabled account rule switches a global one off
for that account. Numbers are Decimal, money integer minor units.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import URLValidator
from django.db import models
from django.db.models import Q
from simple_history.models import HistoricalRecords

from metering.models import CURRENCY_VALIDATOR

# Defaults of each kind's parameters; a rule's `params` override them key by key.
DEFAULT_PARAMS: dict[str, dict] = {
    "spike": {
        "multiple": 3,  # today's usage at least this many times the weekday median...
        "band_mads": 3,  # ...and above median + band_mads x 1.4826 x MAD
        "critical_multiple": 10,
        "weeks": 8,  # same weekdays looked back
        "min_history_days": 14,  # counted from the first day with usage
        "min_samples": 3,  # same-weekday days (since the first usage) needed
        "resolve_after_hours": 24,
    },
    "drop": {
        "active_ratio": 0.8,  # usage on at least this share of the last 28 complete days...
        "window_days": 28,
        "hours": 48,  # ...then no usage at all for this many hours: critical
        "below_ratio": 0.1,  # or each of the last ceil(hours/24) complete days under this
        "weeks": 8,  # share of its weekday median: warning
        "min_history_days": 14,
        "resolve_after_hours": 24,
    },
    "invoice": {
        "amount_minor": None,  # fire once the projected invoice reaches this amount,
        "multiple": None,  # or this multiple of the previous period's invoice
        "critical_factor": 2,  # critical at this factor of the threshold
    },
    "quota": {
        "warning_percent": 80,
        "critical_percent": 100,
    },
}


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        SPIKE = "spike", "Usage spike"
        DROP = "drop", "Usage drop"
        INVOICE = "invoice", "Projected invoice"
        QUOTA = "quota", "Quota"

    class Scope(models.TextChoices):
        GLOBAL = "global", "All accounts"
        TIER = "tier", "One tier"
        ACCOUNT = "account", "One account"

    code = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.GLOBAL)
    tier = models.CharField(max_length=64, blank=True, help_text="For tier-scoped rules.")
    account = models.ForeignKey(
        "metering.Account",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="For account-scoped rules.",
    )
    meter = models.ForeignKey(
        "metering.Meter",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="Empty: every meter.",
    )
    params = models.JSONField(
        default=dict, blank=True, help_text="Overrides of the kind's defaults (see the README)."
    )
    enabled = models.BooleanField(default=True)
    hold = models.BooleanField(
        default=False,
        help_text="A critical alert of this rule holds the account's billing push.",
    )
    notify_customer = models.BooleanField(
        default=False, help_text="Send the customer's signed webhook for this rule's alerts."
    )
    email_to = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Comma-separated addresses; empty: the account's metadata.cs_owner_email.",
    )
    # A CharField with the URL validator: a URLField's form field warns about Django 6's
    # default scheme in every ModelForm built for this model.
    team_webhook_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[URLValidator(schemes=["https", "http"])],
        help_text="Slack-compatible incoming webhook URL.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["kind", "code"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="global", tier="", account__isnull=True)
                    | (Q(scope="tier", account__isnull=True) & ~Q(tier=""))
                    | Q(scope="account", tier="", account__isnull=False)
                ),
                name="alert_rule_scope_fields",
            ),
        ]

    def __str__(self) -> str:
        return self.code

    def param(self, name: str):
        if name in (self.params or {}):
            return self.params[name]
        return DEFAULT_PARAMS[self.kind][name]

    @property
    def effective_params(self) -> dict:
        return {**DEFAULT_PARAMS[self.kind], **(self.params or {})}


class Alert(models.Model):
    class Level(models.IntegerChoices):
        WARNING = 1, "Warning"
        CRITICAL = 2, "Critical"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        SNOOZED = "snoozed", "Snoozed"
        RESOLVED = "resolved", "Resolved"

    class Label(models.TextChoices):
        EXPECTED = "expected", "Expected"
        PLANNED = "planned", "Planned"
        FALSE_ALARM = "false_alarm", "False alarm"

    rule = models.ForeignKey(AlertRule, on_delete=models.PROTECT, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertRule.Kind.choices)
    account = models.ForeignKey("metering.Account", on_delete=models.CASCADE, related_name="alerts")
    meter = models.ForeignKey(
        "metering.Meter", null=True, blank=True, on_delete=models.CASCADE, related_name="alerts"
    )
    # "" for spike and drop (one open episode at a time), the billing period's first local day
    # (or the local month) for quota and invoice.
    period_key = models.CharField(max_length=32, blank=True, default="")
    level = models.PositiveSmallIntegerField(choices=Level.choices, default=Level.WARNING)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_alerts",
    )
    snoozed_until = models.DateTimeField(null=True, blank=True)
    label = models.CharField(max_length=16, choices=Label.choices, blank=True)
    # The local day the numbers were measured on (the account's zone).
    day = models.DateField()
    observed = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    baseline = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    band_low = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    band_high = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    multiple = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    period_usage = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    previous_period_usage = models.DecimalField(
        max_digits=38, decimal_places=12, null=True, blank=True
    )
    limit = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    projected_invoice_minor = models.BigIntegerField(null=True, blank=True)
    previous_invoice_minor = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True, validators=[CURRENCY_VALIDATOR])
    drivers = models.JSONField(default=list, blank=True)
    message = models.TextField(blank=True)
    opened_at = models.DateTimeField()
    evaluated_at = models.DateTimeField()
    escalated_at = models.DateTimeField(null=True, blank=True)
    # When the condition was last seen cleared (None while it holds): auto-resolve after a while.
    cleared_since = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_reason = models.CharField(max_length=255, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "account", "meter", "period_key"],
                condition=~Q(status="resolved"),
                nulls_distinct=False,
                name="alert_one_open_per_rule_account_meter_period",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-opened_at"], name="alert_status_opened"),
            models.Index(fields=["account", "status"], name="alert_account_status"),
        ]
        permissions = [
            ("acknowledge_alert", "Can acknowledge and assign alerts"),
            ("snooze_alert", "Can snooze alerts"),
            ("resolve_alert", "Can resolve alerts with a reason"),
            ("label_alert", "Can label alerts"),
        ]

    def __str__(self) -> str:
        meter = self.meter.code if self.meter_id else "invoice"
        return f"{self.get_kind_display()} {self.account_id}/{meter} ({self.get_status_display()})"


class AlertNotification(models.Model):
    """What alerts asked the notification transports to send (one row per message asked)."""

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "Customer webhook"
        EMAIL = "email", "E-mail"
        TEAM_WEBHOOK = "team_webhook", "Team webhook"

    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.CharField(max_length=16, choices=Channel.choices)
    event_type = models.CharField(max_length=64, blank=True)
    recipient = models.CharField(max_length=1000, blank=True)
    idempotency_key = models.CharField(max_length=255)
    payload = models.JSONField(default=dict, blank=True)
    # False when the notifications app is not installed (the request was logged, not sent).
    handed_over = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "idempotency_key"], name="alert_notification_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.event_type} {self.idempotency_key}"


class BillingHold(models.Model):
    """Usage of a held account is ingested and shown but not pushed to the billing provider
    until a Manager releases the hold with a reason."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        RELEASED = "released", "Released"

    class ReleaseMode(models.TextChoices):
        PUSH = "push", "Push everything held"
        PUSH_AND_CREDIT = "push_and_credit", "Push and open a credit"

    account = models.ForeignKey(
        "metering.Account", on_delete=models.CASCADE, related_name="billing_holds"
    )
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="holds"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    reason = models.CharField(max_length=255)
    opened_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    release_mode = models.CharField(max_length=32, choices=ReleaseMode.choices, blank=True)
    release_reason = models.CharField(max_length=255, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(status="active"), name="billing_hold_one_active"
            ),
        ]
        permissions = [("release_billinghold", "Can release a billing hold")]

    def __str__(self) -> str:
        return f"hold {self.account_id} ({self.status})"
