"""Adjustments API serializers: the request body and the adjustment as answered."""

from __future__ import annotations

from rest_framework import serializers

from adjustments.models import Adjustment, ReasonCode

MAX_MINOR = 10**15


class AdjustmentInputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Adjustment.Kind.choices)
    amount_minor = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_MINOR,
        help_text="Credits: the amount in the account currency's minor units (cents, yen, fils).",
    )
    currency = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=3,
        help_text="Optional; must be the account's currency (no exchange rates).",
    )
    meter = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Usage corrections: code."
    )
    period_start = serializers.DateField(
        required=False,
        allow_null=True,
        help_text="The billing period's first local day; default: the open period (credits) "
        "or the period containing `day`.",
    )
    day = serializers.DateField(
        required=False,
        allow_null=True,
        help_text="Usage corrections: the local day corrected (else the whole period).",
    )
    corrected_quantity = serializers.DecimalField(
        max_digits=38,
        decimal_places=12,
        required=False,
        allow_null=True,
        min_value=0,
        help_text="Usage corrections: the right usage for the day or period, a decimal string.",
    )
    reason_code = serializers.ChoiceField(choices=ReasonCode.values)
    note = serializers.CharField(max_length=5000, help_text="Why (required).")
    ticket = serializers.CharField(required=False, allow_blank=True, max_length=255)
    mismatch = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Reconciliation mismatch id."
    )
    alert = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="Alert id."
    )
    idempotency_key = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=255,
        help_text="Repeat it and the first answer comes back (per API key).",
    )


class AdjustmentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Adjustment.Status.choices)
    kind = serializers.ChoiceField(choices=Adjustment.Kind.choices)
    account = serializers.CharField(source="account.external_id")
    currency = serializers.CharField()
    amount_minor = serializers.IntegerField()
    meter = serializers.CharField(source="meter.code", allow_null=True, default=None)
    period_start = serializers.DateField(source="period.start_date", allow_null=True, default=None)
    period_end = serializers.DateField(source="period.end_date", allow_null=True, default=None)
    day = serializers.DateField(allow_null=True)
    original_quantity = serializers.DecimalField(
        max_digits=38, decimal_places=12, allow_null=True, normalize_output=True
    )
    corrected_quantity = serializers.DecimalField(
        max_digits=38, decimal_places=12, allow_null=True, normalize_output=True
    )
    price_difference_minor = serializers.IntegerField(allow_null=True)
    total_before_minor = serializers.IntegerField(allow_null=True)
    total_after_minor = serializers.IntegerField(allow_null=True)
    reason_code = serializers.ChoiceField(choices=ReasonCode.values)
    note = serializers.CharField()
    ticket = serializers.CharField(allow_blank=True)
    mismatch = serializers.IntegerField(source="mismatch_id", allow_null=True)
    alert = serializers.IntegerField(source="alert_id", allow_null=True)
    requested_by = serializers.CharField(source="requester_label")
    approved_by = serializers.SerializerMethodField()
    within_policy = serializers.BooleanField()
    rejection_reason = serializers.CharField(allow_blank=True)
    provider_route = serializers.CharField(allow_blank=True)
    provider_credit_id = serializers.CharField(allow_blank=True)
    provider_error = serializers.CharField(allow_blank=True)
    idempotency_key = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    applied_at = serializers.DateTimeField(allow_null=True)

    def get_approved_by(self, obj) -> str | None:
        return obj.approved_by.get_username() if obj.approved_by_id else None


class AdjustmentPageSerializer(serializers.Serializer):
    results = AdjustmentSerializer(many=True)
    next = serializers.URLField(allow_null=True)
