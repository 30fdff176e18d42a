from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from alerts.notify import WEBHOOK_EVENT_TYPES
from metering.api.serializers import StrictCharField
from metering.decimals import decimal_text


class AlertSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.CharField(source="account.external_id")
    meter = serializers.CharField(source="meter.code", allow_null=True)
    kind = serializers.CharField()
    level = serializers.SerializerMethodField()
    status = serializers.CharField()
    opened_at = serializers.DateTimeField()
    observed = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)
    baseline = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)
    multiple = serializers.DecimalField(max_digits=20, decimal_places=2, allow_null=True)
    period_usage = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)
    previous_period_usage = serializers.DecimalField(
        max_digits=38, decimal_places=12, allow_null=True
    )
    projected_invoice_minor = serializers.IntegerField(allow_null=True)
    currency = serializers.CharField(allow_null=True)
    message = serializers.CharField()

    def get_level(self, alert) -> str:
        return alert.get_level_display().lower()

    def to_representation(self, alert):
        data = super().to_representation(alert)
        if alert.meter_id is None:
            data["meter"] = None
        data["currency"] = alert.currency or None
        for name in ("observed", "baseline", "period_usage", "previous_period_usage", "multiple"):
            value = getattr(alert, name)
            data[name] = None if value is None else _decimal_text(value)
        return data


def _decimal_text(value) -> str:
    return decimal_text(value)


class AlertPageSerializer(serializers.Serializer):
    results = AlertSerializer(many=True)
    next = serializers.URLField(allow_null=True)


# --- customer webhook endpoints --------------------------------------------------------------


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean and nothing else: DRF's BooleanField takes "yes", 1 and "true" too."""

    default_error_messages = {"invalid_type": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid_type")
        return data


class WebhookEndpointInputSerializer(serializers.Serializer):
    """The whole endpoint (PUT replaces it): where to send, which event types, on or off."""

    url = StrictCharField(
        max_length=2000,
        help_text="Where to POST. In production `https` to a public address only.",
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(
            choices=list(WEBHOOK_EVENT_TYPES),
            error_messages={
                "invalid_choice": '"{input}" is not an event type; the event types are '
                + ", ".join(WEBHOOK_EVENT_TYPES)
                + "."
            },
        ),
        allow_empty=False,
        max_length=20,
        help_text="The event types to send to this endpoint.",
    )
    enabled = StrictBooleanField(required=False, default=True)


class WebhookEndpointOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField()
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=list(WEBHOOK_EVENT_TYPES))
    )
    enabled = serializers.BooleanField()
    disabled_reason = serializers.SerializerMethodField(
        help_text="Why it was disabled: `gone` (the receiver answered 410), `failing` (failed "
        "for 5 days), or null (enabled, or disabled through this API)."
    )
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True,
        help_text="After a rotation: until when the previous secret still signs too.",
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_disabled_reason(self, endpoint) -> str | None:
        return endpoint.disabled_reason or None


class WebhookEndpointWithSecretSerializer(WebhookEndpointOutputSerializer):
    """The answer that creates an endpoint or rotates its secret: the only time it is shown."""

    secret = serializers.CharField(
        help_text="The `whsec_` signing secret. Shown in this answer only: store it now."
    )


class WebhookEndpointPageSerializer(serializers.Serializer):
    results = WebhookEndpointOutputSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class RotateSecretInputSerializer(serializers.Serializer):
    overlap_hours = serializers.IntegerField(
        required=False,
        default=24,
        min_value=0,
        max_value=168,
        help_text="How long the previous secret keeps signing too (0: not at all).",
    )

    def to_internal_value(self, data):
        value = data.get("overlap_hours") if isinstance(data, dict) else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise serializers.ValidationError(
                {"overlap_hours": [ErrorDetail("Must be a whole number.", code="invalid_type")]}
            )
        return super().to_internal_value(data)
