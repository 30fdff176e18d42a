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


class ProjectionSnapshot(models.Model):
    """The projected invoice of an account's open period as it stood on one local day.

    Taken daily so the admin can show how the projection moved over the period. One row per
    (account, period, local day): taking it again the same day updates that row.
    """

    account = models.ForeignKey(
        "metering.Account", on_delete=models.CASCADE, related_name="projection_snapshots"
    )
    period = models.ForeignKey(
        BillingPeriod, on_delete=models.CASCADE, related_name="projection_snapshots"
    )
    taken_on = models.DateField(help_text="The local day (account's zone) this snapshot is for.")
    currency = models.CharField(max_length=3, validators=[CURRENCY_VALIDATOR])
    to_date_total_minor = models.BigIntegerField(help_text="Total of usage so far, minor units.")
    projected_total_minor = models.BigIntegerField(
        help_text="Total forecast at period end, minor units."
    )
    # One entry per line (kind, meter, units to date, forecast units, amounts) with decimals as
    # strings and amounts as integer minor units.
    lines = models.JSONField(default=list, blank=True, encoder=DjangoJSONEncoder)
    computed_at = models.DateTimeField(help_text="When this row was last computed (UTC).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["account", "period", "taken_on"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period", "taken_on"], name="projection_snapshot_one_per_day"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.taken_on:%Y-%m-%d}: {self.projected_total_minor}"


# --- Billing providers -----------------------------------------------------------------------
# What we told the billing provider, what it answered, and what it says it recorded. The push
# ledger (PushLedgerEntry), not the provider's ~24 h identifier dedupe, is what guarantees each
# piece of usage is counted once; see billing.services.push for the rules.


class Provider(models.TextChoices):
    SIMULATED = "simulated", "Simulated"
    STRIPE = "stripe", "Stripe"


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


class PushInbox(models.Model):
    """Events not yet entered in the push ledger.

    Filled by a statement-level insert trigger on the event table (migration 0003), in the
    event's own transaction, and drained with DELETE ... RETURNING in the same transaction that
    writes the ledger rows: an event committed late is simply drained later (no watermark to
    skip it), and a drain that rolls back leaves its rows for the next one.
    """

    event_id = models.BigIntegerField(primary_key=True)

    class Meta:
        verbose_name = "push inbox entry"
        verbose_name_plural = "push inbox"

    def __str__(self) -> str:
        return f"event {self.event_id}"


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


class WebhookEvent(models.Model):
    """A verified provider webhook, stored once per event id (replays are ignored)."""

    class Outcome(models.TextChoices):
        PROCESSED = "processed", "Processed"
        STORED = "stored", "Stored (no handler)"
        FAILED = "failed", "Failed"

    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.STRIPE)
    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=255, db_index=True)
    api_version = models.CharField(max_length=64, blank=True)
    livemode = models.BooleanField(default=False)
    created_at_provider = models.DateTimeField(null=True, blank=True)
    payload = models.JSONField(default=dict, encoder=DjangoJSONEncoder)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True)
    notes = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=1, help_text="Times it was delivered.")

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} ({self.event_id})"


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
