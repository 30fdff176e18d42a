"""The simulated provider's records and fault configuration."""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from simple_history.models import HistoricalRecords


class SimulatedFaultConfig(models.Model):
    """Seeded faults of the simulated provider, so that reconciliation has something real to
    find. Whether a fault hits a piece of usage is a pure function of (seed, identifier), so a
    run is reproducible whatever the batching or order. Rates are fractions in [0, 1]."""

    name = models.CharField(max_length=100)
    seed = models.BigIntegerField(default=0)
    drop_rate = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal(0))
    duplicate_rate = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal(0))
    delay_rate = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal(0))
    delay_seconds = models.PositiveIntegerField(default=0)
    skew_rate = models.DecimalField(max_digits=5, decimal_places=4, default=Decimal(0))
    skew_seconds = models.IntegerField(default=0, help_text="May be negative.")
    # The demo seeds one account's fault this way, so the other accounts reconcile clean.
    customers = models.JSONField(
        default=list,
        blank=True,
        help_text="Provider customer ids the faults hit (sim_<account external id>); empty: all.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["active"], condition=models.Q(active=True), name="simulated_faults_one"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    drop_rate__gte=0,
                    drop_rate__lte=1,
                    duplicate_rate__gte=0,
                    duplicate_rate__lte=1,
                    delay_rate__gte=0,
                    delay_rate__lte=1,
                    skew_rate__gte=0,
                    skew_rate__lte=1,
                ),
                name="simulated_faults_rates_0_1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} (seed {self.seed})"


class SimulatedUsageRecord(models.Model):
    """What the simulated provider recorded: one row per copy it counts (a duplicated piece of
    usage has copy 1 too), and dropped usage kept with `dropped` so tests and staff can see
    what the fault did. Summaries count rows not dropped and visible at the time asked."""

    identifier = models.CharField(max_length=100, db_index=True)
    copy = models.PositiveSmallIntegerField(default=0)
    customer_id = models.CharField(max_length=255)
    event_name = models.CharField(max_length=100)
    value = models.DecimalField(max_digits=38, decimal_places=12)
    # As sent, and as recorded (shifted by a skew fault).
    sent_timestamp = models.DateTimeField()
    timestamp = models.DateTimeField()
    received_at = models.DateTimeField()
    visible_at = models.DateTimeField()
    dropped = models.BooleanField(default=False)
    faults = models.JSONField(default=list, blank=True)
    fault_config = models.ForeignKey(
        SimulatedFaultConfig, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["customer_id", "event_name", "timestamp"], name="simulated_usage_lookup"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identifier}#{self.copy}"


class SimulatedCredit(models.Model):
    """A credit the simulated provider recorded (an adjustment that reached it): once per
    idempotency key, as a real provider would."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    credit_id = models.CharField(max_length=64, unique=True)
    reference = models.CharField(max_length=100)
    customer_id = models.CharField(max_length=255)
    currency = models.CharField(max_length=3)
    amount_minor = models.BigIntegerField()
    route = models.CharField(max_length=24)
    invoice_id = models.CharField(max_length=255, blank=True)
    reason_code = models.CharField(max_length=32)
    description = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.credit_id
