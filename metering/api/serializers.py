"""API shapes.

Accounts and meters use DRF serializers (a request carries one object). Event ingestion does not:
a batch is validated item by item in plain Python (metering.services.ingest), which is about a
hundred times cheaper than a serializer per item. The event serializers below exist only to
document those shapes in the OpenAPI schema.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from metering.models import Meter

# --- accounts and meters ------------------------------------------------------------------------


class StrictCharField(serializers.CharField):
    """A JSON string and nothing else: DRF's CharField stores 12 or 1.5 as "12" and "1.5"."""

    default_error_messages = {"invalid_type": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_type")
        return super().to_internal_value(data)


class AccountInputSerializer(serializers.Serializer):
    """The whole account: a field left out takes its default (PUT replaces the representation)."""

    name = StrictCharField(max_length=255, required=False, allow_blank=True, default="")
    timezone = StrictCharField(
        max_length=64, required=False, default="UTC", help_text="IANA time zone, e.g. Europe/Berlin"
    )
    currency = StrictCharField(
        max_length=3, required=False, default="USD", help_text="ISO 4217 code, e.g. USD"
    )
    tier = StrictCharField(max_length=64, required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict)


class AccountOutputSerializer(serializers.Serializer):
    external_id = serializers.CharField()
    name = serializers.CharField()
    timezone = serializers.CharField()
    currency = serializers.CharField()
    tier = serializers.CharField()
    status = serializers.CharField()
    metadata = serializers.DictField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class BillingHoldOutputSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=["active"],
        help_text="Always `active` (a released hold is no hold: the field is null).",
    )
    since = serializers.DateTimeField(help_text="When the hold started (RFC 3339, UTC).")
    reason = serializers.CharField(help_text="Why billing is held (e.g. the alert that held it).")


class AccountDetailOutputSerializer(AccountOutputSerializer):
    billing_hold = BillingHoldOutputSerializer(
        allow_null=True,
        help_text="null, or the active billing hold: the account's usage is still ingested, "
        "stored and shown, but not pushed to the billing provider until staff release the "
        "hold (the `account.billing_hold` webhook tells of both). A product may throttle "
        "while it is set, if its contract says so.",
    )


class _ReplayFields(serializers.Serializer):
    """What an upsert set going in the background (only in PUT answers)."""

    replay = serializers.SerializerMethodField(
        help_text="`queued` when this call created the account or meter and queued the replay "
        "of its quarantined events (a task, after the answer); `none` otherwise."
    )
    replay_queued = serializers.SerializerMethodField(
        help_text="How many quarantined events were queued for replay (at most 10,000)."
    )

    def get_replay(self, obj) -> str:
        return "queued" if getattr(obj, "replay_queued", 0) else "none"

    def get_replay_queued(self, obj) -> int:
        return getattr(obj, "replay_queued", 0)


class AccountUpsertOutputSerializer(AccountOutputSerializer, _ReplayFields):
    pass


class MeterInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=255)
    aggregation = serializers.ChoiceField(choices=Meter.Aggregation.choices)
    value_property = StrictCharField(
        max_length=255,
        required=False,
        allow_blank=True,
        default="",
        help_text="The property aggregated; required for every aggregation but count.",
    )
    dimensions = serializers.ListField(
        child=StrictCharField(max_length=255),
        required=False,
        default=list,
        help_text="Property keys usage can be broken down by.",
    )
    unit = StrictCharField(max_length=64, required=False, allow_blank=True, default="")


class MeterOutputSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    aggregation = serializers.CharField()
    value_property = serializers.CharField()
    dimensions = serializers.ListField(child=serializers.CharField())
    unit = serializers.CharField()
    active = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MeterUpsertOutputSerializer(MeterOutputSerializer, _ReplayFields):
    pass


# --- errors -------------------------------------------------------------------------------------


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(allow_null=True)
    code = serializers.CharField(help_text="Stable, machine-readable.")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable.")
    message = serializers.CharField()
    errors = FieldErrorSerializer(many=True)


# --- events (documentation only) ----------------------------------------------------------------

STATUSES = ("accepted", "duplicate", "quarantined", "conflict", "rejected")


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "number"}]})
class TimestampField(serializers.Field):
    """Documentation only: a Lago timestamp is a string or a number."""


class LagoEventSerializer(serializers.Serializer):
    transaction_id = serializers.CharField(
        max_length=255, help_text="Unique per account: a retry with the same id is a duplicate."
    )
    external_customer_id = serializers.CharField(max_length=255, help_text="The account.")
    code = serializers.CharField(max_length=255, help_text="The meter code.")
    timestamp = TimestampField(
        required=False,
        allow_null=True,
        help_text="Unix seconds (integer, decimal or numeric string) or an RFC 3339 time with "
        "an offset. At most 5 minutes in the future. Absent or null: the time of reception.",
    )
    properties = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Numbers are kept exactly (no float rounding). Null is no properties.",
    )
    external_subscription_id = serializers.JSONField(
        required=False, help_text="Accepted for Lago compatibility and ignored (any value)."
    )


class LagoSingleSerializer(serializers.Serializer):
    event = LagoEventSerializer()


class LagoBatchSerializer(serializers.Serializer):
    events = LagoEventSerializer(many=True)


class CloudEventSerializer(serializers.Serializer):
    specversion = serializers.ChoiceField(choices=["1.0"])
    id = serializers.CharField(max_length=255, help_text="Unique per source (source + id).")
    source = serializers.CharField(max_length=255)
    type = serializers.CharField(max_length=255, help_text="The meter code.")
    subject = serializers.CharField(max_length=255, help_text="The account's external id.")
    time = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="RFC 3339, with an offset. Absent or null: the time of reception.",
    )
    data = serializers.DictField(
        required=False, allow_null=True, help_text="The event's properties; null is none."
    )


class EventResultSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "quarantined"])
    transaction_id = serializers.CharField()
    event_id = serializers.IntegerField(
        allow_null=True, help_text="The stored event (null while quarantined)."
    )


class EventRejectedSerializer(ErrorSerializer):
    # Absent when the body is not one event at all (malformed_json, invalid_body).
    status = serializers.ChoiceField(
        choices=["conflict", "rejected"],
        required=False,
        help_text="Present when the event itself was judged.",
    )
    transaction_id = serializers.CharField(allow_null=True, required=False)


class BatchItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the item in the request.")
    transaction_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=STATUSES)
    errors = FieldErrorSerializer(many=True)


class BatchResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    quarantined = serializers.IntegerField()
    conflicts = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BatchItemResultSerializer(many=True, help_text="One per item, in request order.")
