"""Accounts and meters."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from metering.admin.common import AuditedHistoryAdmin, _copy_saved
from metering.models import Account, Meter, UsageEvent
from metering.services.accounts import account_upsert, meter_upsert

# --- accounts and meters ---------------------------------------------------------------------


@admin.register(Account)
class AccountAdmin(AuditedHistoryAdmin):
    list_display = (
        "external_id",
        "name",
        "tier",
        "status",
        "timezone",
        "currency",
        "created_at",
        "events_link",
    )
    list_display_links = ("external_id", "name")
    list_filter = ("status", "tier", "timezone", "currency")
    search_fields = ("external_id", "name", "provider_customer_id")
    readonly_fields = ("created_at", "updated_at", "events_link", "quarantine_link")
    list_per_page = 50
    # The usage page's template (metering.admin_dashboard); an admin extending this one may
    # render a template that extends it.
    usage_template = "admin/metering/account/usage.html"

    def get_readonly_fields(self, request, obj=None):
        # The external id is the key product backends use; changing it would orphan their events.
        if obj is not None:
            return ("external_id", *self.readonly_fields)
        return self.readonly_fields

    def get_urls(self):
        # The account usage page (metering.admin_dashboard), before the catch-all object URLs.
        from metering.admin_dashboard import account_usage_urls

        return account_usage_urls(self) + super().get_urls()

    @admin.display(description="Events")
    def events_link(self, obj: Account) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:metering_usageevent_changelist")
        return format_html(
            '<a href="{}?{}">events</a>', url, urlencode({"account__id__exact": obj.pk})
        )

    @admin.display(description="Quarantined events")
    def quarantine_link(self, obj: Account) -> str:
        if obj.pk is None:
            return "-"
        url = reverse("admin:metering_quarantinedevent_changelist")
        query = urlencode({"external_customer_id__exact": obj.external_id})
        return format_html('<a href="{}?{}">quarantined events</a>', url, query)

    def save_model(self, request, obj, form, change):
        # Through the service, as the API does: creating an account queues the replay of its
        # quarantined events, and a new time zone queues the rebuild of its rollups.
        reason = form.cleaned_data.get("change_reason", "") if change else ""
        account, _created = account_upsert(
            external_id=obj.external_id,
            name=obj.name,
            timezone=obj.timezone,
            currency=obj.currency,
            tier=obj.tier,
            metadata=obj.metadata,
            actor=request.user,
            reason=reason,
        )
        # Status and provider id are staff-only fields, outside the API's representation.
        _save_extra(account, obj, ("status", "provider_customer_id"), request.user, reason)
        _copy_saved(account, into=obj)


@admin.register(Meter)
class MeterAdmin(AuditedHistoryAdmin):
    list_display = ("code", "name", "aggregation", "dims", "unit", "active")
    list_filter = ("aggregation", "active")
    search_fields = ("code", "name")
    readonly_fields = ("created_at", "updated_at")

    @admin.display(description="Dimensions")
    def dims(self, obj: Meter) -> str:
        return ", ".join(obj.dimensions or []) or "-"

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return self.readonly_fields
        # Events refer to meters by code; renaming it would break every client.
        fixed = ["code"]
        # Stored values were computed for the aggregation and property; they stay as they are
        # once there are events (metering.services.accounts.meter_upsert enforces it too).
        if UsageEvent.objects.filter(meter=obj).exists():
            fixed += ["aggregation", "value_property"]
        return (*fixed, *self.readonly_fields)

    def save_model(self, request, obj, form, change):
        # Through the service, as the API does: creating a meter queues its quarantine replay.
        reason = form.cleaned_data.get("change_reason", "") if change else ""
        meter, _created = meter_upsert(
            code=obj.code,
            name=obj.name,
            aggregation=obj.aggregation,
            value_property=obj.value_property,
            dimensions=obj.dimensions,
            unit=obj.unit,
            actor=request.user,
            reason=reason,
        )
        _save_extra(meter, obj, ("active",), request.user, reason)
        _copy_saved(meter, into=obj)


def _save_extra(saved, edited, fields: tuple[str, ...], actor, reason: str) -> None:
    """Apply the admin-only `fields` of `edited` to the row a service just saved."""
    changed = [f for f in fields if getattr(edited, f) != getattr(saved, f)]
    if not changed:
        return
    for f in changed:
        setattr(saved, f, getattr(edited, f))
    saved._history_user = actor
    if reason:
        saved._change_reason = reason
    saved.save(update_fields=[*changed, "updated_at"])
