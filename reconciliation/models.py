"""Reconciliation: our usage against what we reported to the billing provider and what it
recorded, per account, meter and billing period (a "cell"), and per UTC day.

- ReconciliationThreshold: when a cell's gap is worth a person's time (global, or per meter).
- ReconciliationRun: one run over one account (or the whole set), with its counts.
- Mismatch: one per cell and platform whose gap went over the threshold; reruns update the
  same row (a unique constraint), and a cell found matching again is resolved automatically.
- MismatchDay: the cell's three numbers per UTC day (the provider counts UTC days), rewritten
  by every run that finds the cell over the threshold.

The workflow (open -> acknowledged -> resolved) lives in reconciliation.services; every change
to a mismatch is kept in its history with the acting user and a reason.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from metering.models import CURRENCY_VALIDATOR

QUANTITY = {"max_digits": 38, "decimal_places": 12}


class Cause(models.TextChoices):
    NOT_PUSHED = "not_pushed", "Not pushed (ledger pending or failed)"
    TOO_OLD = "too_old", "Too old for the provider (outside its 35-day window)"
    BILLING_HOLD = "billing_hold", "Kept back by a billing hold"
    PROVIDER_MISSING = "provider_missing", "Missing at the provider"
    PROVIDER_EXTRA = "provider_extra", "Extra at the provider (duplicates)"
    DAY_SHIFT = "day_shift", "Usage moved across the period boundary"
    LATE_AFTER_CLOSE = "late_after_close", "Usage arrived after the period was invoiced"
    CUSTOMER_MAPPING = "customer_mapping", "Wrong or missing provider customer"
    METER_CONFIG = "meter_config", "Provider meter aggregates differently"
    ROUNDING = "rounding", "Rounding"
    UNEXPLAINED = "unexplained", "Unexplained"


class ReconciliationThreshold(models.Model):
    """When a cell's gap opens a mismatch: the gap must exceed every one of the absolute units,
    the relative share (% of our number) and the money at stake (minor units of the account's
    currency; ignored for a meter the plan does not price). One row without a meter is the
    global default; a row for a meter overrides it. Without any row, any gap opens one."""

    meter = models.OneToOneField(
        "metering.Meter",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="reconciliation_threshold",
        help_text="Empty: the global default.",
    )
    absolute_units = models.DecimalField(
        **QUANTITY, default=Decimal(0), validators=[MinValueValidator(Decimal(0))]
    )
    relative_percent = models.DecimalField(
        max_digits=9, decimal_places=4, default=Decimal(0), validators=[MinValueValidator(0)]
    )
    money_minor = models.BigIntegerField(default=0, validators=[MinValueValidator(0)])
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["meter__code"]
        constraints = [
            models.UniqueConstraint(
                fields=["meter"], nulls_distinct=False, name="reconciliation_threshold_one_per"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    absolute_units__gte=0, relative_percent__gte=0, money_minor__gte=0
                ),
                name="reconciliation_threshold_non_negative",
            ),
        ]

    def __str__(self) -> str:
        scope = self.meter.code if self.meter_id else "global"
        return (
            f"{scope}: > {self.absolute_units} units, > {self.relative_percent}%, "
            f">= {self.money_minor} minor units"
        )


class ReconciliationRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    account = models.ForeignKey(
        "metering.Account",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="reconciliation_runs",
        help_text="Empty: a run over several accounts.",
    )
    # The platform compared against: the primary (BILLING_PROVIDER) or the read-only secondary
    # (BILLING_PROVIDER_SECONDARY); each platform's run is recorded on its own.
    provider = models.CharField(max_length=16, blank=True, verbose_name="platform")
    trigger = models.CharField(max_length=32, default="task")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    periods = models.PositiveIntegerField(default=0)
    cells_compared = models.PositiveIntegerField(default=0)
    mismatches_opened = models.PositiveIntegerField(default=0)
    mismatches_updated = models.PositiveIntegerField(default=0)
    mismatches_resolved = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["account", "-started_at"], name="recon_run_account")]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status}) {self.started_at:%Y-%m-%d %H:%M}"


class MismatchQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)

    def unresolved(self):
        return self.exclude(status=Mismatch.Status.RESOLVED)


class Mismatch(models.Model):
    """One account × meter × billing period whose numbers differ by more than the threshold,
    on one platform (`provider`: the primary, or the read-only secondary during a migration).

    `ours` is from our rollups in the meter's aggregation over the period's exact bounds;
    `reported` what the push ledger says the provider took (sent or acknowledged), `pending`
    what it has not taken yet (pending or failed), `too_old` what it never will; `provider`
    what the provider recorded over the same bounds; `invoiced` the quantity on its invoice
    line once the period is closed. `delta` = ours − provider (the contract's delta). A
    read-only secondary platform has no push ledger of its own (Meterops never pushes to it):
    its `reported` is ours (what it should hold) and pending/too_old are 0, so its whole gap is
    on the platform's side.
    `causes` is ranked (the most likely first): [{"code", "score", "amount", "sentence",
    "evidence"}].
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        RESOLVED = "resolved", "Resolved"

    class Resolution(models.TextChoices):
        REPUSHED = "repushed", "Re-pushed"
        CREDITED = "credited", "Credited"
        ACCEPTED = "accepted", "Accepted"
        PROVIDER_FIXED = "provider_fixed", "Fixed at the provider"
        AUTO = "auto", "Resolved automatically (matching again)"

    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="reconciliation_mismatches"
    )
    meter = models.ForeignKey(
        "metering.Meter", on_delete=models.PROTECT, related_name="reconciliation_mismatches"
    )
    period = models.ForeignKey(
        "billing.BillingPeriod", on_delete=models.PROTECT, related_name="reconciliation_mismatches"
    )
    # Denormalised from the period for the queue's filters and the API.
    period_start = models.DateField(help_text="First local day of the period.")
    period_end = models.DateField(help_text="Local day after the period (exclusive).")
    period_starts_at = models.DateTimeField()
    period_ends_at = models.DateTimeField()
    # The platform this cell was compared against (see ReconciliationRun.provider): each
    # platform has its own mismatch per cell, side by side.
    provider = models.CharField(max_length=16, verbose_name="platform")

    ours = models.DecimalField(**QUANTITY)
    reported = models.DecimalField(**QUANTITY)
    pending = models.DecimalField(**QUANTITY, default=Decimal(0))
    too_old = models.DecimalField(**QUANTITY, default=Decimal(0))
    provider_value = models.DecimalField(**QUANTITY)
    invoiced = models.DecimalField(**QUANTITY, null=True, blank=True)
    delta = models.DecimalField(**QUANTITY, help_text="ours − provider")
    delta_reported = models.DecimalField(**QUANTITY, help_text="ours − reported")
    delta_provider = models.DecimalField(**QUANTITY, help_text="reported − provider")
    delta_invoiced = models.DecimalField(
        **QUANTITY, null=True, blank=True, help_text="ours − invoiced"
    )
    delta_amount_minor = models.BigIntegerField(
        default=0, help_text="What the largest gap is worth at the account's prices."
    )
    currency = models.CharField(max_length=3, validators=[CURRENCY_VALIDATOR])

    causes = models.JSONField(default=list, blank=True)
    top_cause = models.CharField(max_length=32, choices=Cause.choices, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    over_threshold = models.BooleanField(default=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reconciliation_mismatches",
    )
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolution_note = models.TextField(blank=True)
    opened_at = models.DateTimeField()
    last_checked_at = models.DateTimeField()
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_run = models.ForeignKey(
        ReconciliationRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # A run that finds nothing new saves nothing, so every history row is a real change.
    history = HistoricalRecords(excluded_fields=["last_checked_at", "last_run"])
    objects = MismatchQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "mismatches"
        ordering = ["-delta_amount_minor", "-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "meter", "period", "provider"],
                name="mismatch_one_per_cell_and_platform",
            ),
            models.CheckConstraint(
                condition=~models.Q(status="resolved") | ~models.Q(resolution=""),
                name="mismatch_resolved_has_resolution",
            ),
        ]
        indexes = [
            models.Index(
                fields=["-delta_amount_minor"],
                condition=~models.Q(status="resolved"),
                name="mismatch_queue",
            ),
            models.Index(fields=["status", "top_cause"], name="mismatch_status_cause"),
        ]
        permissions = [
            ("acknowledge_mismatch", "Can acknowledge and assign mismatches"),
            ("resolve_mismatch", "Can resolve mismatches"),
            ("repush_mismatch", "Can re-push a mismatch's usage through the push ledger"),
        ]

    def __str__(self) -> str:
        return f"{self.account_id and self.account.external_id} / {self.meter_id and self.meter.code} {self.period_start}"

    def clean(self) -> None:
        if self.status == self.Status.RESOLVED and not self.resolution:
            raise ValidationError({"resolution": "A resolved mismatch says how it was resolved."})

    @property
    def cause_codes(self) -> list[str]:
        return [c["code"] for c in self.causes]


class MismatchDay(models.Model):
    """One UTC day of a mismatch's cell (the provider counts UTC days). `ours` is from the
    hourly (UTC) rollups; days at the period's edges are whole UTC days, so they may hold usage
    of the neighbouring period too (the same for all three numbers)."""

    mismatch = models.ForeignKey(Mismatch, on_delete=models.CASCADE, related_name="days")
    day = models.DateField(help_text="UTC day.")
    ours = models.DecimalField(**QUANTITY, null=True, blank=True)
    reported = models.DecimalField(**QUANTITY, null=True, blank=True)
    pending = models.DecimalField(**QUANTITY, default=Decimal(0))
    provider = models.DecimalField(**QUANTITY, null=True, blank=True)
    events = models.PositiveIntegerField(default=0, help_text="Raw events that UTC day.")

    class Meta:
        ordering = ["mismatch", "day"]
        constraints = [
            models.UniqueConstraint(fields=["mismatch", "day"], name="mismatch_day_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.day}"


class ProviderPullMark(models.Model):
    """When reconciliation last pulled the provider's day summaries of one cell (provider,
    period, meter), so that a later run skips what cannot have changed since (see
    `reconciliation.services._pull_plan`)."""

    provider = models.CharField(max_length=16)
    period = models.ForeignKey("billing.BillingPeriod", on_delete=models.CASCADE, related_name="+")
    meter = models.ForeignKey("metering.Meter", on_delete=models.CASCADE, related_name="+")
    pulled_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "period", "meter"], name="provider_pull_mark_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider} pull of period {self.period_id}, meter {self.meter_id}"
