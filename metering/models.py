"""Metering: accounts, meters, API keys, usage events and their quarantine.

Events are append-only. Nothing edits or deletes a UsageEvent; a correction is a new event
(kind=correction) that references what it corrects.
"""

from __future__ import annotations

import functools
import zoneinfo

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import connection, models
from simple_history.models import HistoricalRecords

from metering.currencies import validate_currency

CODE_VALIDATOR = RegexValidator(
    r"^[a-z0-9][a-z0-9_\-]{0,62}$",
    "Use 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit.",
    code="invalid_code",
)
CURRENCY_VALIDATOR = RegexValidator(
    r"^[A-Z]{3}$", "Use a three-letter ISO 4217 code such as USD.", code="invalid_currency"
)


@functools.cache
def _iana_timezones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk (~90 ms a call); read it once.
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def postgres_timezones() -> frozenset[str]:
    """The zone names the database server knows (`pg_timezone_names`), read once per process.

    Rollups cut days with `AT TIME ZONE` in SQL: a zone Python knows but PostgreSQL does not
    (its tz database is older, or built differently) would make every rollup batch holding the
    account fail and retry for ever, so accounts may only use zones both know.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_timezone_names")
        return frozenset(name for (name,) in cursor.fetchall())


def validate_timezone(value: str) -> None:
    if value not in _iana_timezones():
        raise ValidationError(
            "%(value)s is not an IANA time zone (for example Europe/Berlin).",
            code="invalid_timezone",
            params={"value": value},
        )
    if value not in postgres_timezones():
        raise ValidationError(
            "%(value)s is not known to the database's time zone list; choose another name for "
            "the same zone (for example Europe/Berlin).",
            code="invalid_timezone",
            params={"value": value},
        )


class AccountQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status=Account.Status.ACTIVE)


class Account(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    external_id = models.CharField(max_length=255, unique=True)
    name = models.CharField(max_length=255, blank=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    currency = models.CharField(max_length=3, default="USD", validators=[CURRENCY_VALIDATOR])
    tier = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    provider_customer_id = models.CharField(max_length=255, blank=True, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()
    objects = AccountQuerySet.as_manager()

    class Meta:
        ordering = ["external_id"]
        indexes = [models.Index(fields=["name"], name="account_name_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_id})" if self.name else self.external_id

    def clean(self) -> None:
        # The field's validator checks the shape (three capitals); this checks the code exists,
        # so that billing never has to guess a currency's decimals.
        if self.currency and CURRENCY_VALIDATOR.regex.match(self.currency):
            try:
                validate_currency(self.currency)
            except ValidationError as exc:
                raise ValidationError({"currency": exc}) from None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class Meter(models.Model):
    class Aggregation(models.TextChoices):
        COUNT = "count", "Count of events"
        SUM = "sum", "Sum of a property"
        MAX = "max", "Maximum of a property"
        UNIQUE_COUNT = "unique_count", "Distinct values of a property"
        LATEST = "latest", "Latest value of a property"

    code = models.CharField(max_length=63, unique=True, validators=[CODE_VALIDATOR])
    name = models.CharField(max_length=255)
    aggregation = models.CharField(max_length=16, choices=Aggregation.choices)
    # The property whose value is aggregated; empty only for `count`.
    value_property = models.CharField(max_length=255, blank=True)
    # Property keys that usage can be broken down by, e.g. ["endpoint", "region"].
    dimensions = models.JSONField(default=list, blank=True)
    unit = models.CharField(max_length=64, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code

    @property
    def is_numeric(self) -> bool:
        """Meters whose property must be a finite decimal (unique_count takes any scalar)."""
        return self.aggregation in {
            self.Aggregation.SUM,
            self.Aggregation.MAX,
            self.Aggregation.LATEST,
        }

    def clean(self) -> None:
        if self.aggregation != self.Aggregation.COUNT and not self.value_property:
            raise ValidationError(
                {"value_property": "Every aggregation but count needs a value property."}
            )
        if not isinstance(self.dimensions, list) or not all(
            isinstance(d, str) and d for d in self.dimensions
        ):
            raise ValidationError({"dimensions": "Dimensions must be a list of property names."})
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValidationError({"dimensions": "Dimensions must not repeat."})


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        INGEST = "ingest", "Send usage events"
        READ = "read", "Read accounts, meters and usage"
        MANAGE = "manage", "Create and change accounts and meters"
        ADJUST = "adjust", "Request credits and usage corrections"

    name = models.CharField(max_length=255)
    # The first characters of the key, shown in the admin to tell keys apart.
    prefix = models.CharField(max_length=16, unique=True)
    # SHA-256 of the whole key; the key itself is never stored.
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords(excluded_fields=["last_used_at"])

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])


class UsageEventQuerySet(models.QuerySet):
    def for_account(self, account):
        return self.filter(account=account)


class UsageEvent(models.Model):
    """One usage event, exactly once.

    Identity is (account, source, transaction_id): `source` is empty for Lago-format events and
    the CloudEvents `source` otherwise (the CloudEvents spec makes source + id unique).
    `content_hash` is a SHA-256 over the canonical content (meter code, timestamp, properties)
    so that a retry can be told apart from a conflicting reuse of the same key without
    comparing JSON.
    """

    class Kind(models.TextChoices):
        NORMAL = "normal", "Normal"
        CORRECTION = "correction", "Correction"

    # No index of its own: the unique key (account, source, transaction_id) and
    # usage_event_acct_time both lead with the account and serve every lookup by account (the
    # reference check of an account delete included), so one per event would be pure cost.
    #
    # Account and meter are checked once per statement, not per row (migration 0010): a
    # statement trigger locks the batch's few distinct accounts and meters (FOR KEY SHARE, as a
    # foreign key would) and refuses the statement if one is missing (the API's insert does the
    # same in the statement itself, migration 0011), and a trigger on
    # metering_account and metering_meter refuses deleting one that has events. A database
    # foreign key instead queues two checks per inserted row, which cost a 1,000-event batch
    # about as much as inserting it.
    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="events",
        db_index=False,
        db_constraint=False,
    )
    meter = models.ForeignKey(
        Meter, on_delete=models.PROTECT, related_name="events", db_constraint=False
    )
    transaction_id = models.CharField(max_length=255)
    source = models.CharField(max_length=255, blank=True, default="")
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    # Decimal value for count (1), sum, max and latest; NULL for unique_count.
    value = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    # The distinct key for unique_count meters (the property's value as text).
    unique_value = models.CharField(max_length=255, blank=True, default="")
    properties = models.JSONField(default=dict, blank=True)
    content_hash = models.BinaryField(max_length=32)
    is_late = models.BooleanField(default=False)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.NORMAL)
    corrects = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="corrections",
        db_index=False,  # the partial index below: corrections are few, events many
    )

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "source", "transaction_id"], name="usage_event_identity"
            ),
        ]
        indexes = [
            # Account-leading, so a move to Citus (sharded by account) needs no schema change.
            models.Index(fields=["account", "meter", "occurred_at"], name="usage_event_acct_time"),
            models.Index(fields=["occurred_at"], name="usage_event_time"),
            # Only corrections have a target. A whole-table index of NULLs would make the
            # rollup's "is this event corrected?" a probe per event, or a scan of every event.
            models.Index(
                fields=["corrects"],
                name="usage_event_corrects",
                condition=models.Q(corrects__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.transaction_id} ({self.meter_id} @ {self.occurred_at:%Y-%m-%d %H:%M})"


class QuarantinedEvent(models.Model):
    """An event we could not attribute yet: kept with its reason, replayed once it can be."""

    class Reason(models.TextChoices):
        UNKNOWN_ACCOUNT = "unknown_account", "Unknown account"
        UNKNOWN_METER = "unknown_meter", "Unknown meter"
        INACTIVE_METER = "inactive_meter", "Meter inactive"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the account or meter"
        REPLAYABLE = "replayable", "Ready to replay"
        REPLAYED = "replayed", "Replayed"
        FAILED = "failed", "Replay failed"

    external_customer_id = models.CharField(max_length=255)
    meter_code = models.CharField(max_length=255)
    transaction_id = models.CharField(max_length=255)
    source = models.CharField(max_length=255, blank=True, default="")
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    properties = models.JSONField(default=dict, blank=True)
    content_hash = models.BinaryField(max_length=32)
    # The original item as received, so a replay uses exactly what the client sent.
    payload = models.JSONField(default=dict)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    replay_result = models.CharField(max_length=32, blank=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    event = models.ForeignKey(
        UsageEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    history = HistoricalRecords(excluded_fields=["payload", "properties"])

    class Meta:
        constraints = [
            # Retrying a quarantined event must not quarantine it twice.
            models.UniqueConstraint(
                fields=["external_customer_id", "source", "transaction_id"],
                name="quarantine_identity",
            ),
        ]
        permissions = [("replay_quarantinedevent", "Can replay quarantined events")]
        indexes = [
            models.Index(fields=["status", "external_customer_id"], name="quarantine_status_acct"),
            models.Index(fields=["status", "meter_code"], name="quarantine_status_meter"),
        ]

    def __str__(self) -> str:
        return f"{self.transaction_id} ({self.get_reason_display()})"


class RollupInbox(models.Model):
    """Events not yet folded into rollups.

    One row per new event, in the same transaction as the event, for every write path: the
    API's insert statement writes it itself (metering.ingest_sql.INSERT_EVENTS, migration 0011),
    and a statement-level trigger on the event table (migration 0002) for every other writer
    (COPY, the ORM). The
    rollup drains it with DELETE ... RETURNING in the same transaction as its upsert, so a row
    whose transaction commits late is simply drained later: nothing can be skipped the way a
    watermark on an id or a timestamp would skip it.
    """

    event_id = models.BigIntegerField(primary_key=True)
    # The event's account, so batches can be claimed an account at a time (rollups_sql).
    account = models.ForeignKey(
        Account, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )

    class Meta:
        managed = True
        verbose_name = "rollup inbox entry"
        verbose_name_plural = "rollup inbox"
        indexes = [models.Index(fields=["account", "event_id"], name="rollup_inbox_account")]

    def __str__(self) -> str:
        return f"event {self.event_id}"


class RolledUpEvent(models.Model):
    """The rolled-up feed: events the rollup drain has folded into the rollups, waiting for the
    one downstream consumer that reads usage event by event (the push to the billing provider).

    Ingestion writes one queue row per event (RollupInbox). The drain, in the transaction that
    deletes a batch from the inbox and upserts its rollups, appends the same (account, event)
    pairs here with one INSERT ... SELECT (rollups_sql.FEED_CLAIMED); the consumer claims rows
    with DELETE ... RETURNING in the transaction that records what it did with them
    (metering.services.rolled_up_feed). So an event reaches the consumer exactly once, only
    after it is in the rollups (every surface agrees on what was counted), and one committed
    late simply arrives later. A drain or a claim that rolls back leaves both tables as they
    were. Keyed by account first, like every large table (see DESIGN: Citus), and claimed by
    key, never by ctid.

    Nothing else writes or reads it; a consumer that is never run lets it grow.
    """

    pk = models.CompositePrimaryKey("account_id", "event_id")
    account_id = models.BigIntegerField()
    event_id = models.BigIntegerField()

    class Meta:
        verbose_name = "rolled-up event"
        verbose_name_plural = "rolled-up feed"

    def __str__(self) -> str:
        return f"event {self.event_id}"


# --- Rollups ---------------------------------------------------------------------------------
# Derived data, rebuilt from the events at will (metering.services.rollups). The foreign keys
# carry no database constraint: a referential check per upserted row would cost more than the
# upsert itself, and the events they are derived from already hold the constraints.

ROLLUP_OTHER = "other"


class RollupBucket(models.Model):
    """What a rollup row holds for one bucket; see metering.services.rollups for the rules.

    `dim_key == ""` (and `dim_value == ""`) is the row for the whole meter; otherwise the row is
    for events whose property `dim_key` has the value `dim_value` (text, "" when the event
    lacks it). Values past ROLLUP_MAX_DIMENSION_VALUES per account, meter, local day and key
    fold into `dim_value == "other"`, and that row has `folded` set.

    - count: events with a value (a void correction has none);
    - sum, max: of the values; latest_*: the value of the event with the greatest
      (occurred_at, id), kept with both so buckets combine without ambiguity;
    - unique_count: distinct non-empty unique values in the bucket (the values themselves are
      in the matching *Distinct table, so a range's count is exact, never a sum).
    """

    account = models.ForeignKey(
        Account, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    meter = models.ForeignKey(
        Meter, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    dim_key = models.CharField(max_length=255, blank=True, default="")
    dim_value = models.CharField(max_length=255, blank=True, default="")
    count = models.BigIntegerField(default=0)
    sum = models.DecimalField(max_digits=50, decimal_places=12, default=0)
    max = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    latest_value = models.DecimalField(max_digits=38, decimal_places=12, null=True, blank=True)
    latest_at = models.DateTimeField(null=True, blank=True)
    latest_event_id = models.BigIntegerField(null=True, blank=True)
    unique_count = models.BigIntegerField(default=0)
    folded = models.BooleanField(default=False)

    class Meta:
        abstract = True


class RollupHourly(RollupBucket):
    """One UTC hour of one account and meter (and dimension value)."""

    pk = models.CompositePrimaryKey("account", "meter", "dim_key", "hour", "dim_value")
    hour = models.DateTimeField()

    class Meta:
        verbose_name = "hourly rollup"
        indexes = [BrinIndex(fields=["hour"], name="rollup_hourly_hour_brin")]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.meter_id} {self.hour:%Y-%m-%d %H:00} {self.dim_key}"


class RollupDaily(RollupBucket):
    """One day in the account's time zone of one account and meter (and dimension value)."""

    pk = models.CompositePrimaryKey("account", "meter", "dim_key", "day", "dim_value")
    day = models.DateField()

    class Meta:
        verbose_name = "daily rollup"
        indexes = [BrinIndex(fields=["day"], name="rollup_daily_day_brin")]

    def __str__(self) -> str:
        return f"{self.account_id}/{self.meter_id} {self.day} {self.dim_key}"


class RollupDistinct(models.Model):
    """The distinct unique values of a unique_count meter's bucket (dimension as in rollups)."""

    account = models.ForeignKey(
        Account, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    meter = models.ForeignKey(
        Meter, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    dim_key = models.CharField(max_length=255, blank=True, default="")
    dim_value = models.CharField(max_length=255, blank=True, default="")
    value = models.CharField(max_length=255)

    class Meta:
        abstract = True


class RollupHourlyDistinct(RollupDistinct):
    pk = models.CompositePrimaryKey("account", "meter", "dim_key", "hour", "dim_value", "value")
    hour = models.DateTimeField()

    class Meta:
        verbose_name = "hourly distinct value"
        indexes = [BrinIndex(fields=["hour"], name="rollup_hdistinct_hour_brin")]

    def __str__(self) -> str:
        return self.value


class RollupDailyDistinct(RollupDistinct):
    pk = models.CompositePrimaryKey("account", "meter", "dim_key", "day", "dim_value", "value")
    day = models.DateField()

    class Meta:
        verbose_name = "daily distinct value"
        indexes = [BrinIndex(fields=["day"], name="rollup_ddistinct_day_brin")]

    def __str__(self) -> str:
        return self.value


class RollupCheck(models.Model):
    """One run of the rollup self-check: what it compared, what drifted, what it repaired."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        CLEAN = "clean", "No drift"
        REPAIRED = "repaired", "Drift repaired"
        FAILED = "failed", "Failed"

    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    # The local days checked (each account's own zone for daily rows; UTC hours from the
    # start of `since` in UTC for hourly rows).
    since = models.DateField()
    until = models.DateField()
    buckets_checked = models.BigIntegerField(default=0)
    drifted = models.BigIntegerField(default=0)
    repaired = models.BigIntegerField(default=0)
    # A bounded sample of the drifted buckets, with expected and found values.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        get_latest_by = "started_at"

    def __str__(self) -> str:
        return f"rollup check {self.started_at:%Y-%m-%d %H:%M} ({self.get_status_display()})"
