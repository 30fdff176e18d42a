from __future__ import annotations

from rest_framework import serializers

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
