"""Shapes of the reconciliation API, for the OpenAPI schema (the view builds the dicts itself:
a page of 100 mismatches with their days is thousands of decimals)."""

from __future__ import annotations

from rest_framework import serializers

from reconciliation.models import Cause, Mismatch


class MismatchDaySerializer(serializers.Serializer):
    day = serializers.DateField(help_text="UTC day.")
    ours = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)
    reported = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)
    provider = serializers.DecimalField(max_digits=38, decimal_places=12, allow_null=True)


class CauseSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=Cause.choices)
    score = serializers.DecimalField(
        max_digits=5, decimal_places=4, help_text="Share of the gap this cause explains, 0 to 1."
    )
    amount = serializers.DecimalField(max_digits=38, decimal_places=12)
    sentence = serializers.CharField(help_text="The cause in plain language, with units.")
    evidence = serializers.DictField(help_text="The numbers that support it.")


class MismatchSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.CharField(help_text="The account's external id.")
    meter = serializers.CharField(help_text="The meter's code.")
    period_start = serializers.DateField(help_text="First local day of the billing period.")
    period_end = serializers.DateField(help_text="Local day after the period (exclusive).")
    status = serializers.ChoiceField(choices=Mismatch.Status.choices)
    causes = CauseSerializer(many=True, help_text="Ranked: the first is the most likely.")
    ours = serializers.DecimalField(max_digits=38, decimal_places=12)
    reported = serializers.DecimalField(max_digits=38, decimal_places=12)
    provider = serializers.DecimalField(max_digits=38, decimal_places=12)
    invoiced = serializers.DecimalField(
        max_digits=38, decimal_places=12, allow_null=True, help_text="Closed periods only."
    )
    delta = serializers.DecimalField(max_digits=38, decimal_places=12, help_text="ours − provider")
    delta_amount_minor = serializers.IntegerField(
        help_text="What the largest gap is worth at the account's prices, in minor units."
    )
    currency = serializers.CharField()
    platform = serializers.CharField(
        help_text=(
            "The billing platform this cell was compared against: the primary "
            "(BILLING_PROVIDER) or the read-only secondary (BILLING_PROVIDER_SECONDARY). "
            "`provider` is that platform's number."
        )
    )
    days = MismatchDaySerializer(many=True)


class MismatchPageSerializer(serializers.Serializer):
    results = MismatchSerializer(many=True)
    next = serializers.URLField(allow_null=True)
