"""Billing: plans, their prices, subscriptions and billing periods.

Money is stored as integer minor units with its currency (plan fees, commitments, period
totals) or, for unit prices and tier prices that may be fractions of a cent, as exact decimals
with up to 12 places. The pricing rules themselves live in billing.pricing (pure functions);
Price.to_spec() hands a stored price to them, and Price.clean() validates through them so there
is one set of rules.
"""

from __future__ import annotations

import json
from decimal import Decimal

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from billing.money import format_money
from billing.pricing import PriceSpec, PricingError, tiers_from_json, tiers_to_json
from metering.models import CODE_VALIDATOR, CURRENCY_VALIDATOR


class DecimalJSONDecoder(json.JSONDecoder):
    """Reads JSON numbers with a fraction as Decimal, so a price typed into the admin's JSON
    field (0.0004) never passes through a float."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parse_float", Decimal)
        super().__init__(*args, **kwargs)


class Plan(models.Model):
    class BillingInterval(models.TextChoices):
        MONTH = "month", "Monthly"

    code = models.CharField(max_length=63, unique=True, validators=[CODE_VALIDATOR])
    name = models.CharField(max_length=255)
    currency = models.CharField(max_length=3, default="USD", validators=[CURRENCY_VALIDATOR])
    billing_interval = models.CharField(
        max_length=16, choices=BillingInterval.choices, default=BillingInterval.MONTH
    )
    flat_fee_minor = models.BigIntegerField(
        default=0,
        validators=[MinValueValidator(0)],
        help_text="Fixed fee per period, in minor units (cents for USD).",
    )
    minimum_commitment_minor = models.BigIntegerField(
        default=0,
        validators=[MinValueValidator(0)],
        help_text="Minimum charge per period in minor units; a true-up line makes up any gap.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(flat_fee_minor__gte=0, minimum_commitment_minor__gte=0),
                name="plan_fees_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"

    @property
    def flat_fee_display(self) -> str:
        return format_money(self.flat_fee_minor, self.currency)

    @property
    def minimum_commitment_display(self) -> str:
        return format_money(self.minimum_commitment_minor, self.currency)


class Price(models.Model):
    """How one meter's usage is charged on one plan. Amounts are in the plan's currency."""

    class PricingModel(models.TextChoices):
        # The same values as billing.pricing.PriceModel (a test keeps them in step).
        PER_UNIT = "per_unit", "Per unit"
        GRADUATED = "graduated", "Graduated tiers"
        VOLUME = "volume", "Volume tiers"
        PACKAGE = "package", "Package"

    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="prices")
    meter = models.ForeignKey("metering.Meter", on_delete=models.PROTECT, related_name="prices")
    name = models.CharField(max_length=255, blank=True, help_text="Shown on the invoice line.")
    model = models.CharField(
        max_length=16, choices=PricingModel.choices, default=PricingModel.PER_UNIT
    )
    unit_price = models.DecimalField(
        max_digits=30, decimal_places=12, default=Decimal(0), help_text="Per unit, per-unit model."
    )
    package_size = models.PositiveIntegerField(null=True, blank=True)
    package_price = models.DecimalField(max_digits=30, decimal_places=12, default=Decimal(0))
    included_units = models.DecimalField(
        max_digits=38,
        decimal_places=12,
        default=Decimal(0),
        help_text="Units per period that cost nothing; subtracted before the model applies.",
    )
    flat_fee = models.DecimalField(
        max_digits=30,
        decimal_places=12,
        default=Decimal(0),
        help_text="Optional fixed fee for this line, in currency units (not minor units).",
    )
    tiers = models.JSONField(
        default=list,
        blank=True,
        encoder=DjangoJSONEncoder,
        decoder=DecimalJSONDecoder,
        help_text='Graduated and volume only: [{"up_to": "1000000", "unit_price": "0.001", '
        '"flat_fee": "0"}, ..., {"up_to": null, ...}]; ascending, the last unbounded.',
    )
    provider_price_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["plan", "meter"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "meter"], name="price_one_per_plan_meter"),
            models.CheckConstraint(
                condition=models.Q(
                    unit_price__gte=0, package_price__gte=0, included_units__gte=0, flat_fee__gte=0
                ),
                name="price_amounts_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan_id and self.plan.code} / {self.meter_id and self.meter.code}"

    def to_spec(self) -> PriceSpec:
        """This price as the pricing engine's PriceSpec (raises PricingError if invalid)."""
        return self._spec(currency=self.plan.currency, meter=self.meter)

    def _spec(self, *, currency: str, meter) -> PriceSpec:
        return PriceSpec(
            model=self.model,
            currency=currency,
            unit_price=self.unit_price,
            package_size=self.package_size,
            package_price=self.package_price,
            included_units=self.included_units,
            flat_fee=self.flat_fee,
            tiers=tiers_from_json(self.tiers),
            meter_code=meter.code if meter else "",
            unit=meter.unit if meter else "",
            name=self.name or (meter.name if meter else ""),
        )

    def clean(self) -> None:
        # One set of rules: the engine's. Normalise tiers to decimal strings on the way. In the
        # admin's add view the plan is not saved yet (and a missing meter is reported by its
        # field), so take what is there.
        plan = getattr(self, "plan", None)
        meter = getattr(self, "meter", None)
        currency = getattr(plan, "currency", "")
        if not (len(currency) == 3 and currency.isalpha()):
            currency = "USD"  # the plan's own form reports its currency; prices are checked anyway
        try:
            spec = self._spec(currency=currency, meter=meter)
        except PricingError as exc:
            own_fields = {field.name for field in self._meta.fields}
            key = exc.field if exc.field in own_fields else NON_FIELD_ERRORS
            raise ValidationError({key: exc.message}) from None
        self.tiers = tiers_to_json(spec.tiers)


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
        return f"{self.start_date:%Y-%m-%d} – {self.end_date:%Y-%m-%d} ({self.state})"

    @property
    def total_display(self) -> str:
        if self.total_minor is None:
            return ""
        return format_money(self.total_minor, self.currency)

    def contains(self, at) -> bool:
        return self.starts_at <= at < self.ends_at
