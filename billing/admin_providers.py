"""The billing-provider back office: provider meters, the push ledger, what the provider
recorded (daily summaries, invoices), webhooks and the simulated provider's faults.

Everything the provider told us is read-only: it is evidence for reconciliation. The one
change staff make to the ledger is "send again" for failed entries (the change permission).
"""

from __future__ import annotations

from django.contrib import admin, messages
from simple_history.admin import SimpleHistoryAdmin

from billing.models import (
    ProviderInvoice,
    ProviderInvoiceLine,
    ProviderMeter,
    ProviderUsageSummary,
    PushLedgerEntry,
    SimulatedFaultConfig,
    SimulatedUsageRecord,
    WebhookEvent,
)
from billing.services.push import ledger_retry_failed
from metering.admin import AuditedAdminMixin, ReadOnlyModelAdmin, pretty_json


@admin.register(ProviderMeter)
class ProviderMeterAdmin(SimpleHistoryAdmin):
    list_display = ("meter", "provider", "provider_meter_id", "event_name", "aggregation")
    list_select_related = ("meter",)
    list_filter = ("provider", "aggregation")
    search_fields = ("meter__code", "provider_meter_id", "event_name")
    readonly_fields = ("created_at", "updated_at")

    def has_add_permission(self, request):
        return False  # created by the push when a meter is first used

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(PushLedgerEntry)
class PushLedgerEntryAdmin(AuditedAdminMixin, ReadOnlyModelAdmin):
    list_display = (
        "identifier",
        "account",
        "meter",
        "kind",
        "value",
        "timestamp",
        "status",
        "attempts",
        "first_sent_at",
        "error_code",
    )
    list_select_related = ("account", "meter")
    list_filter = ("status", "provider", "kind")
    search_fields = ("identifier", "account__external_id")
    date_hierarchy = "timestamp"
    show_full_result_count = False
    ordering = ("-id",)
    actions = ("send_again",)
    fields = (
        "provider",
        "identifier",
        "idempotency_key",
        "kind",
        "account",
        "meter",
        "event_id",
        "value",
        "timestamp",
        "day",
        "period_start",
        "seq",
        "status",
        "attempts",
        "created_at",
        "first_sent_at",
        "last_attempt_at",
        "completed_at",
        "error_code",
        "payload_pretty",
        "response_pretty",
    )
    readonly_fields = fields

    @admin.display(description="Payload sent")
    def payload_pretty(self, obj: PushLedgerEntry) -> str:
        return pretty_json(obj.payload) if obj.payload else "-"

    @admin.display(description="Provider's answer")
    def response_pretty(self, obj: PushLedgerEntry) -> str:
        return pretty_json(obj.response) if obj.response else "-"

    def has_send_again_permission(self, request) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    @admin.action(permissions=["send_again"], description="Send failed entries again")
    def send_again(self, request, queryset):
        count = ledger_retry_failed(
            entry_ids=queryset.values_list("pk", flat=True),
            actor=request.user,
            reason="Send failed entries again (admin action)",
        )
        self.message_user(
            request,
            f"{count} failed entrie(s) will be sent at the next push, with the same identifier.",
            messages.SUCCESS,
        )


@admin.register(ProviderUsageSummary)
class ProviderUsageSummaryAdmin(ReadOnlyModelAdmin):
    list_display = ("account", "meter", "provider", "day", "value", "pulled_at")
    list_select_related = ("account", "meter")
    list_filter = ("provider", "meter")
    search_fields = ("account__external_id",)
    date_hierarchy = "day"
    show_full_result_count = False


class ProviderInvoiceLineInline(admin.TabularInline):
    model = ProviderInvoiceLine
    extra = 0
    fields = ("description", "meter", "quantity", "amount_minor", "provider_price_id")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ProviderInvoice)
class ProviderInvoiceAdmin(ReadOnlyModelAdmin):
    list_display = (
        "__str__",
        "account",
        "provider",
        "status",
        "total_display",
        "period_start",
        "period_end",
        "pulled_at",
    )
    list_select_related = ("account",)
    list_filter = ("provider", "status")
    search_fields = ("provider_invoice_id", "number", "account__external_id", "customer_id")
    inlines = (ProviderInvoiceLineInline,)

    @admin.display(description="Total", ordering="total_minor")
    def total_display(self, obj: ProviderInvoice) -> str:
        return obj.total_display


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyModelAdmin):
    list_display = ("event_id", "type", "outcome", "received_at", "processed_at", "deliveries")
    list_filter = ("type", "outcome")
    search_fields = ("event_id", "type")
    date_hierarchy = "received_at"
    show_full_result_count = False
    fields = (
        "event_id",
        "type",
        "provider",
        "api_version",
        "livemode",
        "created_at_provider",
        "received_at",
        "processed_at",
        "outcome",
        "notes",
        "deliveries",
        "payload_pretty",
    )
    readonly_fields = fields

    @admin.display(description="Payload")
    def payload_pretty(self, obj: WebhookEvent) -> str:
        return pretty_json(obj.payload)


@admin.register(SimulatedFaultConfig)
class SimulatedFaultConfigAdmin(SimpleHistoryAdmin):
    list_display = (
        "name",
        "seed",
        "active",
        "drop_rate",
        "duplicate_rate",
        "delay_rate",
        "delay_seconds",
        "skew_rate",
        "skew_seconds",
        "created_at",
    )
    list_filter = ("active",)


@admin.register(SimulatedUsageRecord)
class SimulatedUsageRecordAdmin(ReadOnlyModelAdmin):
    list_display = (
        "identifier",
        "copy",
        "customer_id",
        "event_name",
        "value",
        "timestamp",
        "dropped",
        "faults",
        "visible_at",
    )
    list_filter = ("dropped", "event_name")
    search_fields = ("identifier", "customer_id")
    show_full_result_count = False
