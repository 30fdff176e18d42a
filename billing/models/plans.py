"""Plans and their prices (and the decoder that keeps a price's JSON tiers exact)."""

from __future__ import annotations

import json
from decimal import Decimal

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from billing.money import format_money
from billing.pricing import PriceSpec, PricingError, tiers_from_json, tiers_to_json
from metering.currencies import is_currency, validate_currency
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

    def clean(self) -> None:
        # The field checks the shape; prices need the currency's minor unit, so it must exist.
        if self.currency and CURRENCY_VALIDATOR.regex.match(self.currency):
            try:
                validate_currency(self.currency)
            except ValidationError as exc:
                raise ValidationError({"currency": exc}) from None

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
        if not is_currency(currency):
            currency = "USD"  # the plan's own form reports its currency; prices are checked anyway
        try:
            spec = self._spec(currency=currency, meter=meter)
        except PricingError as exc:
            own_fields = {field.name for field in self._meta.fields}
            key = exc.field if exc.field in own_fields else NON_FIELD_ERRORS
            raise ValidationError({key: exc.message}) from None
        self.tiers = tiers_to_json(spec.tiers)
