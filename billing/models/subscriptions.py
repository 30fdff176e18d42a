"""Subscriptions and their billing periods."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from billing.models.plans import Plan
from billing.money import format_money
from metering.models import CURRENCY_VALIDATOR


class SubscriptionQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)


class Subscription(models.Model):
    """An account on a plan from `started_at` (a local date) until `ended_at` (exclusive)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (starts later)"
        ACTIVE = "active", "Active"
        CANCELED = "canceled", "Canceled"

    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="subscriptions"
    )
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    started_at = models.DateField(help_text="First day, in the account's time zone.")
    ended_at = models.DateField(
        null=True, blank=True, help_text="First day no longer covered (exclusive)."
    )
    billing_anchor_day = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(31)],
        help_text="Day of month periods start; 29-31 fall back to a short month's last day.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    provider_subscription_id = models.CharField(max_length=255, blank=True, db_index=True)
    # The billing provider's subscription item per meter code, e.g. {"api_calls": "si_123"}.
    provider_item_ids = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()
    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        ordering = ["account", "-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(billing_anchor_day__gte=1, billing_anchor_day__lte=31),
                name="subscription_anchor_day_1_31",
            ),
            models.CheckConstraint(
                condition=models.Q(ended_at__isnull=True)
                | models.Q(ended_at__gt=models.F("started_at")),
                name="subscription_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["account"],
                condition=models.Q(status="active"),
                name="subscription_one_active_per_account",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "started_at"], name="subscription_acct_start"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.account_id and self.account.external_id} on {self.plan_id and self.plan.code}"
        )

    def clean(self) -> None:
        if self.ended_at and self.started_at and self.ended_at <= self.started_at:
            raise ValidationError({"ended_at": "The end must be after the start."})


class BillingPeriodQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)

    def containing(self, at):
        """Periods whose [starts_at, ends_at) contains the instant `at`."""
        return self.filter(starts_at__lte=at, ends_at__gt=at)


class BillingPeriod(models.Model):
    """One billing period of a subscription: local dates [start_date, end_date) in the account's
    time zone (kept in `timezone`), and the same span as UTC instants [starts_at, ends_at).

    States: open (usage counts towards it), closing (being invoiced: its usage is frozen) and
    closed (invoiced; `total_minor` is what was billed, and usage arriving later is shown as late,
    never added to it).
    """

    class State(models.TextChoices):
        OPEN = "open", "Open"
        CLOSING = "closing", "Closing"
        CLOSED = "closed", "Closed"

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="periods")
    # Denormalised from the subscription so per-account reads need no join.
    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="billing_periods"
    )
    start_date = models.DateField()
    end_date = models.DateField(help_text="Exclusive: the first day of the next period.")
    timezone = models.CharField(max_length=64, help_text="The zone the dates were cut in.")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    currency = models.CharField(max_length=3, validators=[CURRENCY_VALIDATOR])
    closed_at = models.DateTimeField(null=True, blank=True)
    total_minor = models.BigIntegerField(
        null=True, blank=True, help_text="Invoice total in minor units, once closed."
    )
    # What was billed when the period closed: one entry per invoice line (kind, title, meter,
    # quantity, units_billed, amount_minor as strings/ints), so the bill can be explained later.
    invoice_lines = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    # The close hold: the roll runs the BILLING_CLOSE_CHECKS before closing an ended period; while
    # any gives reasons (e.g. reconciliation mismatches over threshold), the period stays as it
    # is with the reasons here. Released by a Manager with a reason: the checks are then skipped.
    hold_reason = models.TextField(
        blank=True, help_text="Why the roll holds this period instead of closing it."
    )
    held_at = models.DateTimeField(null=True, blank=True)
    hold_released_at = models.DateTimeField(null=True, blank=True)
    hold_released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(excluded_fields=["invoice_lines"])
    objects = BillingPeriodQuerySet.as_manager()

    class Meta:
        ordering = ["account", "-start_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "start_date"], name="billing_period_one_per_start"
            ),
            models.CheckConstraint(
                condition=models.Q(end_date__gt=models.F("start_date"))
                & models.Q(ends_at__gt=models.F("starts_at")),
                name="billing_period_ends_after_start",
            ),
            models.CheckConstraint(
                condition=~models.Q(state="closed")
                | models.Q(total_minor__isnull=False, closed_at__isnull=False),
                name="billing_period_closed_has_total",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "starts_at"], name="billing_period_acct_start"),
            models.Index(fields=["state", "ends_at"], name="billing_period_state_end"),
        ]

    def __str__(self) -> str:
        # Days inclusive, as every page shows periods (end_date is the next period's first day).
        last = max(self.start_date, self.end_date - timedelta(days=1))
        return f"{self.start_date:%Y-%m-%d} – {last:%Y-%m-%d} ({self.state})"

    @property
    def is_held(self) -> bool:
        return bool(self.hold_reason) and self.state != self.State.CLOSED

    @property
    def total_display(self) -> str:
        if self.total_minor is None:
            return ""
        return format_money(self.total_minor, self.currency)

    def contains(self, at) -> bool:
        return self.starts_at <= at < self.ends_at
