"""Credits and usage corrections with four-eyes approval, and the policy that sets the limits.

An Adjustment is written only by adjustments.services (one write path): every save sets the
acting user (or the API key) and a reason, so its history rows (and the audit log built from
them) say who did what and why, with the usage and the money before and after kept as fields.

States: draft -> requested -> approved -> applied, or failed (the provider's error kept; retried
from approved/failed), rejected (with a reason), withdrawn, expired (not decided in the
policy's number of days). Nothing but the state fields changes once requested: a request is
withdrawn and made anew. The database refuses an approver who is the requesting user.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from billing.money import format_money
from metering.currencies import validate_currency

__all__ = ["Adjustment", "AdjustmentPolicy", "ReasonCode"]


class ReasonCode(models.TextChoices):
    METERING_ERROR = "metering_error", "Metering error"
    DUPLICATE_USAGE = "duplicate_usage", "Duplicate usage"
    OUTAGE_SLA = "outage_sla", "Outage / SLA credit"
    PRICING_ERROR = "pricing_error", "Pricing error"
    GOODWILL = "goodwill", "Goodwill"
    RECONCILIATION = "reconciliation", "Reconciliation"
    OTHER = "other", "Other"


class AdjustmentPolicy(models.Model):
    """What Support may apply without a second person, per currency and tier.

    The most specific row wins: (currency, tier), then (currency, any tier), then (any
    currency, tier), then (any, any); with no row at all, the defaults below apply. The limit
    is in the account's currency (major units, no exchange rates): 100 means 100.00 USD,
    100 JPY, 100.000 KWD.
    """

    DEFAULT_SUPPORT_LIMIT = Decimal(100)
    DEFAULT_EXPIRY_DAYS = 7

    currency = models.CharField(
        max_length=3, blank=True, help_text="ISO 4217 code; blank for every currency."
    )
    tier = models.CharField(max_length=64, blank=True, help_text="Account tier; blank for all.")
    support_limit = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        default=DEFAULT_SUPPORT_LIMIT,
        help_text="Credits (and usage corrections' price differences) up to this amount, in "
        "the account's currency, are applied without a Manager's approval.",
    )
    expiry_days = models.PositiveIntegerField(
        default=DEFAULT_EXPIRY_DAYS, help_text="A request not decided in this many days expires."
    )
    allow_carried_balance = models.BooleanField(
        default=False,
        help_text="Credits beyond the invoice total carry to the next invoice (a negative "
        "total); otherwise the projected total stops at zero.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "adjustment policies"
        ordering = ["currency", "tier"]
        constraints = [
            models.UniqueConstraint(fields=["currency", "tier"], name="adjustment_policy_unique"),
            models.CheckConstraint(
                condition=models.Q(support_limit__gte=0), name="adjustment_policy_limit_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.currency or 'any currency'} / {self.tier or 'any tier'}"

    def clean(self) -> None:
        if self.currency:
            validate_currency(self.currency)


class Adjustment(models.Model):
    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit"
        USAGE_CORRECTION = "usage_correction", "Usage correction"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        REQUESTED = "requested", "Requested"
        APPROVED = "approved", "Approved"
        APPLIED = "applied", "Applied"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"
        EXPIRED = "expired", "Expired"

    class Route(models.TextChoices):
        """How the adjustment reached the billing provider."""

        NONE = "", "—"
        SIMULATED_CREDIT = "simulated_credit", "Simulated provider credit"
        BALANCE_TRANSACTION = "balance_transaction", "Customer balance transaction"
        CREDIT_NOTE = "credit_note", "Credit note on the invoice"
        BALANCE_INCREMENT = "balance_increment", "Balance increment (next invoice)"
        WALLET_GRANT = "wallet_grant", "Granted wallet credits (next invoice)"
        CREDIT_GRANT = "credit_grant", "Credit grant (next invoice)"
        USAGE_PUSH = "usage_push", "Correction events pushed as usage"

    ReasonCode = ReasonCode

    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="adjustments"
    )
    currency = models.CharField(max_length=3)
    # The credit in minor units (positive: in the customer's favour). For a usage correction,
    # the price difference the provider is credited with when the period is already invoiced.
    amount_minor = models.BigIntegerField(default=0)
    period = models.ForeignKey(
        "billing.BillingPeriod",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adjustments",
    )
    # Usage corrections only.
    meter = models.ForeignKey(
        "metering.Meter", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    day = models.DateField(null=True, blank=True, help_text="A local day in the account's zone.")
    original_quantity = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    corrected_quantity = models.DecimalField(
        max_digits=38, decimal_places=12, null=True, blank=True
    )
    # Period invoice before and after (minor units): the money the audit shows.
    total_before_minor = models.BigIntegerField(null=True, blank=True)
    total_after_minor = models.BigIntegerField(null=True, blank=True)
    price_difference_minor = models.BigIntegerField(
        null=True, blank=True, help_text="Invoice before minus after, for usage corrections."
    )
    correction_event_ids = models.JSONField(default=list, blank=True)

    reason_code = models.CharField(max_length=20, choices=ReasonCode.choices)
    note = models.TextField()
    ticket = models.CharField(max_length=255, blank=True)
    mismatch = models.ForeignKey(
        "reconciliation.Mismatch",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="adjustments",
    )
    alert = models.ForeignKey(
        "alerts.Alert", null=True, blank=True, on_delete=models.PROTECT, related_name="adjustments"
    )

    # The requester: a staff user or an API key (its own requester), never both.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    requested_by_key = models.ForeignKey(
        "metering.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    idempotency_key = models.CharField(max_length=255, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Approved without a second person because the policy allows it (within the limit).
    within_policy = models.BooleanField(default=False)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    rejection_reason = models.TextField(blank=True)

    provider = models.CharField(max_length=16, blank=True)
    provider_route = models.CharField(max_length=24, choices=Route.choices, blank=True)
    provider_credit_id = models.CharField(max_length=255, blank=True)
    provider_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("request_adjustment", "Can request a credit or usage correction"),
            ("apply_adjustment", "Can apply an adjustment within the policy limit"),
            ("approve_adjustment", "Can approve or reject another person's adjustment"),
        ]
        constraints = [
            # Four eyes, in the database: whoever calls, an approver is not the requester.
            models.CheckConstraint(
                condition=models.Q(approved_by__isnull=True)
                | models.Q(requested_by__isnull=True)
                | ~models.Q(approved_by=models.F("requested_by")),
                name="adjustment_approver_not_requester",
            ),
            models.CheckConstraint(
                condition=~models.Q(requested_by__isnull=False, requested_by_key__isnull=False),
                name="adjustment_one_requester",
            ),
            models.CheckConstraint(
                condition=models.Q(amount_minor__gte=0), name="adjustment_amount_gte_0"
            ),
            models.CheckConstraint(condition=~models.Q(note=""), name="adjustment_note_required"),
            models.UniqueConstraint(
                fields=["requested_by_key", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="adjustment_api_idempotency",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "-created_at"], name="adjustment_account_recent"),
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status="requested"),
                name="adjustment_requested_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def amount_text(self) -> str:
        """The credit with its currency, or the usage change with its unit and its price."""

        def money(minor: int | None) -> str:
            return "–" if minor is None else format_money(minor, self.currency)

        if self.kind == self.Kind.USAGE_CORRECTION:
            if self.original_quantity is None:
                return ""
            unit = self.meter.unit if self.meter_id else ""
            return (
                f"{self.original_quantity.normalize():f} → {self.corrected_quantity.normalize():f}"
                f" {unit} ({money(self.price_difference_minor)})"
            )
        return money(self.amount_minor)

    @property
    def requester_label(self) -> str:
        if self.requested_by_id:
            return self.requested_by.get_username()
        if self.requested_by_key_id:
            return f"API key {self.requested_by_key}"
        return ""

    @property
    def is_open(self) -> bool:
        return self.status in (self.Status.REQUESTED, self.Status.APPROVED, self.Status.FAILED)
