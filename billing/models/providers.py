"""Billing providers: which provider, our meters as provider meters, and what the provider
says it recorded (usage summaries, invoices and their lines).

What we told the billing provider, what it answered, and what it says it recorded. The push
ledger (PushLedgerEntry), not the provider's ~24 h identifier dedupe, is what guarantees each
piece of usage is counted once; see billing.services.push for the rules.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from simple_history.models import HistoricalRecords

from billing.money import format_money


class Provider(models.TextChoices):
    SIMULATED = "simulated", "Simulated"
    STRIPE = "stripe", "Stripe"
    ORB = "orb", "Orb"
    LAGO = "lago", "Lago"
    METRONOME = "metronome", "Metronome"
    AMBERFLO = "amberflo", "Amberflo"


class ProviderMeter(models.Model):
    """One of our meters as a provider meter: its id, the event name usage is sent under, and
    the provider-side aggregation (Stripe meters aggregate only sum, count or last: count and
    sum meters are sent as values to a `sum` meter, max/unique_count/latest as period-to-date
    values to a `last` meter)."""

    class Aggregation(models.TextChoices):
        SUM = "sum", "Sum"
        COUNT = "count", "Count"
        LAST = "last", "Last value"

    provider = models.CharField(max_length=16, choices=Provider.choices)
    meter = models.ForeignKey(
        "metering.Meter", on_delete=models.PROTECT, related_name="provider_meters"
    )
    provider_meter_id = models.CharField(max_length=255)
    event_name = models.CharField(max_length=100)
    aggregation = models.CharField(max_length=8, choices=Aggregation.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["provider", "event_name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "meter"], name="provider_meter_one_per"),
            models.UniqueConstraint(
                fields=["provider", "provider_meter_id"], name="provider_meter_id_unique"
            ),
            models.UniqueConstraint(
                fields=["provider", "event_name"], name="provider_meter_event_name_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.event_name} ({self.aggregation})"


class ProviderCustomer(models.Model):
    """Our account as a customer of one billing platform: the id usage is sent under there,
    recorded by the push when it first resolves the customer (created at the platform, or
    matched by our external id). One per (platform, account); a changed id is kept in the
    history."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="provider_customers"
    )
    provider_customer_id = models.CharField(max_length=255)
    matched_by = models.CharField(
        max_length=32,
        help_text="How the platform knows the account: `external_id` (our account's external "
        "id is the platform's key), `stored_id` (the id kept on the account) or `derived`.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["provider", "account"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "account"], name="provider_customer_one_per"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.provider_customer_id}"


class ProviderUsageSummary(models.Model):
    """What the provider says it recorded for one customer, meter and UTC day (for a `last`
    meter, the last value of that day)."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    account = models.ForeignKey(
        "metering.Account", on_delete=models.PROTECT, related_name="provider_usage_summaries"
    )
    meter = models.ForeignKey(
        "metering.Meter", on_delete=models.PROTECT, related_name="provider_usage_summaries"
    )
    provider_meter_id = models.CharField(max_length=255)
    day = models.DateField(help_text="UTC day.")
    value = models.DecimalField(max_digits=38, decimal_places=12)
    pulled_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "provider usage summaries"
        ordering = ["account", "meter", "day"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "account", "meter", "day"], name="provider_summary_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.account_id}/{self.meter_id} {self.day}: {self.value}"


class ProviderInvoice(models.Model):
    """An invoice as the provider issued it, pulled for reconciliation."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    provider_invoice_id = models.CharField(max_length=255)
    account = models.ForeignKey(
        "metering.Account",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="provider_invoices",
    )
    customer_id = models.CharField(max_length=255)
    number = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=32, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    total_minor = models.BigIntegerField(default=0)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    created_at_provider = models.DateTimeField(null=True, blank=True)
    raw = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    pulled_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at_provider"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "provider_invoice_id"], name="provider_invoice_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.number or self.provider_invoice_id

    @property
    def total_display(self) -> str:
        return format_money(self.total_minor, self.currency.upper()) if self.currency else ""


class ProviderInvoiceLine(models.Model):
    invoice = models.ForeignKey(ProviderInvoice, on_delete=models.CASCADE, related_name="lines")
    provider_line_id = models.CharField(max_length=255)
    description = models.TextField(blank=True)
    # Exact: Stripe's quantity_decimal when present, else its integer quantity.
    quantity = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    amount_minor = models.BigIntegerField(default=0)
    provider_price_id = models.CharField(max_length=255, blank=True)
    # Resolved through Price.provider_price_id, when the price is known here.
    meter = models.ForeignKey(
        "metering.Meter", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    raw = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ["invoice", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["invoice", "provider_line_id"], name="provider_invoice_line_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.description or self.provider_line_id
