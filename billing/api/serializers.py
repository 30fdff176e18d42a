"""Shapes of the projected-invoice API.

Amounts are integer minor units with a formatted string next to them (`..._minor` and
`..._formatted`); units and unit prices are decimal strings, so nothing passes through a float.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.money import format_money
from billing.pricing import decimal_text


@extend_schema_field(OpenApiTypes.STR)
class DecimalTextField(serializers.Field):
    """An exact decimal as plain text ('12400000', '0.0004'); null stays null."""

    def to_representation(self, value):
        return decimal_text(value)


def _money(obj, minor_attr: str) -> str | None:
    minor = getattr(obj, minor_attr)
    return None if minor is None else format_money(minor, obj.currency)


class ProjectionTierSerializer(serializers.Serializer):
    tier = serializers.SerializerMethodField(help_text="1-based position in the price's tiers.")
    from_units = DecimalTextField(help_text="Billed units above this (exclusive).")
    to_units = DecimalTextField(allow_null=True, help_text="Up to and including; null: no end.")
    units = DecimalTextField(help_text="Billed units charged in this tier.")
    unit_price = DecimalTextField()
    flat_fee = DecimalTextField()
    amount = DecimalTextField(help_text="Exact, before the line is rounded.")

    def get_tier(self, obj) -> int:
        return obj.index + 1


class ProjectionTopDimensionSerializer(serializers.Serializer):
    dimension = serializers.CharField()
    value = serializers.CharField()
    units = DecimalTextField()


class ProjectedLineSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["plan_fee", "usage", "minimum_commitment", "credit"])
    title = serializers.CharField()
    meter = serializers.CharField(source="meter_code", allow_null=True)
    aggregation = serializers.CharField(allow_null=True)
    unit = serializers.CharField(allow_null=True)
    units_to_date = DecimalTextField(allow_null=True)
    forecast_units = DecimalTextField(
        allow_null=True, help_text="Expected at the end of the period."
    )
    included_units = DecimalTextField(allow_null=True, help_text="The allowance per period.")
    forecast_method = serializers.ChoiceField(
        choices=["weekday_mean", "current_value", "distinct_so_far"], allow_null=True
    )
    tiers_to_date = ProjectionTierSerializer(many=True)
    tiers_projected = ProjectionTierSerializer(many=True)
    currency = serializers.CharField()
    amount_to_date_minor = serializers.IntegerField()
    amount_to_date_formatted = serializers.SerializerMethodField()
    projected_amount_minor = serializers.IntegerField()
    projected_amount_formatted = serializers.SerializerMethodField()
    top_dimension = ProjectionTopDimensionSerializer(source="top", allow_null=True)
    explanation = serializers.CharField(help_text="Plain language, for reading to a customer.")

    def get_amount_to_date_formatted(self, obj) -> str:
        return _money(obj, "amount_to_date_minor")

    def get_projected_amount_formatted(self, obj) -> str:
        return _money(obj, "projected_amount_minor")

    def to_representation(self, instance):
        data = super().to_representation(instance)
        # Plan-fee and true-up lines have no meter: null rather than "".
        for key in ("meter", "aggregation", "unit"):
            data[key] = data[key] or None
        return data


class ProjectionPeriodSerializer(serializers.Serializer):
    start = serializers.DateField(source="period_start")
    end = serializers.DateField(source="period_end", help_text="Exclusive.")
    last_day = serializers.DateField()
    state = serializers.CharField(source="period_state")
    timezone = serializers.CharField()
    days_in_period = serializers.IntegerField()
    days_elapsed = serializers.IntegerField(help_text="Including the as-of day.")


class ProjectionPreviousPeriodSerializer(serializers.Serializer):
    start = serializers.DateField(source="start_date")
    end = serializers.DateField(source="end_date", help_text="Exclusive.")
    state = serializers.CharField()
    total_minor = serializers.IntegerField()
    total_formatted = serializers.SerializerMethodField()
    source = serializers.ChoiceField(
        choices=["invoiced", "usage"],
        help_text="invoiced: the closed period's billed total; usage: priced from its usage.",
    )

    def get_total_formatted(self, obj) -> str:
        return format_money(obj.total_minor, self.context["currency"])


class ProjectionChangeSerializer(serializers.Serializer):
    amount_minor = serializers.IntegerField()
    amount_formatted = serializers.CharField()
    percent = serializers.CharField(
        allow_null=True, help_text="One decimal place, e.g. '12.5'; null when the base is 0."
    )


class ProjectedInvoiceSerializer(serializers.Serializer):
    account = serializers.CharField(source="account_external_id")
    plan = serializers.SerializerMethodField()
    currency = serializers.CharField()
    as_of = serializers.DateField(source="on", help_text="Local day counted in 'to date'.")
    generated_at = serializers.DateTimeField()
    period = serializers.SerializerMethodField()
    to_date_total_minor = serializers.IntegerField()
    to_date_total_formatted = serializers.SerializerMethodField()
    projected_total_minor = serializers.IntegerField()
    projected_total_formatted = serializers.SerializerMethodField()
    previous_period = serializers.SerializerMethodField()
    change = serializers.SerializerMethodField()
    summary = serializers.CharField()
    lines = ProjectedLineSerializer(many=True)

    def get_plan(self, obj) -> dict[str, str]:
        return {"code": obj.plan_code, "name": obj.plan_name}

    @extend_schema_field(ProjectionPeriodSerializer)
    def get_period(self, obj):
        return ProjectionPeriodSerializer(obj).data

    def get_to_date_total_formatted(self, obj) -> str:
        return _money(obj, "to_date_total_minor")

    def get_projected_total_formatted(self, obj) -> str:
        return _money(obj, "projected_total_minor")

    @extend_schema_field(ProjectionPreviousPeriodSerializer(allow_null=True))
    def get_previous_period(self, obj):
        if obj.previous is None:
            return None
        return ProjectionPreviousPeriodSerializer(
            obj.previous, context={"currency": obj.currency}
        ).data

    @extend_schema_field(ProjectionChangeSerializer(allow_null=True))
    def get_change(self, obj):
        if obj.change_minor is None:
            return None
        return {
            "amount_minor": obj.change_minor,
            "amount_formatted": format_money(obj.change_minor, obj.currency),
            "percent": None if obj.change_percent is None else str(obj.change_percent),
        }
