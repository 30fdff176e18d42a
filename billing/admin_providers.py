"""The billing-provider back office: provider meters, the push ledger, what the provider
recorded (daily summaries, invoices), webhooks and the simulated provider's faults.

Everything the provider told us is read-only: it is evidence for reconciliation. The one
change staff make to the ledger is "send again" for failed entries (the change permission).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Q

from billing.models import (
    Provider,
    ProviderCustomer,
    ProviderInvoice,
    ProviderInvoiceLine,
    ProviderMeter,
    ProviderUsageSummary,
    PushLedgerEntry,
    SimulatedCredit,
    SimulatedFaultConfig,
    SimulatedUsageRecord,
    WebhookEvent,
)
from billing.services.push import ledger_retry_failed
from metering.admin import (
    AuditedHistoryAdmin,
    EstimatedCountPaginator,
    ReadOnlyModelAdmin,
    pretty_json,
)
from metering.models import Account

# The ledger and the simulated provider's records have a row per event: their lists never
# count the table (estimated counts, no facets, no date hierarchy) and search only by exact,
# index-backed values (an icontains search would read every row).


@admin.register(ProviderMeter)
class ProviderMeterAdmin(AuditedHistoryAdmin):
    list_display = ("meter", "provider", "provider_meter_id", "event_name", "aggregation")
    list_select_related = ("meter",)
    list_filter = ("provider", "aggregation")
    search_fields = ("meter__code", "provider_meter_id", "event_name")
    readonly_fields = ("created_at", "updated_at")
    # Created by the push when a meter is first used; its history is evidence.
    read_only = True


@admin.register(ProviderCustomer)
class ProviderCustomerAdmin(AuditedHistoryAdmin):
    """Each account's customer at each platform (created there or matched by external id)."""

    list_display = ("account", "provider", "provider_customer_id", "matched_by", "updated_at")
    list_select_related = ("account",)
    list_filter = ("provider", "matched_by")
    search_fields = ("account__external_id", "provider_customer_id")
    readonly_fields = ("created_at", "updated_at")
    # Written by the push when it resolves a customer; its history is evidence.
    read_only = True


@admin.register(PushLedgerEntry)
class PushLedgerEntryAdmin(ReadOnlyModelAdmin):
    list_display = ("identifier", "account", "meter", "value", "timestamp", "status", "attempts")
    list_select_related = ("account", "meter")
    list_filter = ("status", "provider", "kind")
    search_fields = ("identifier", "account__external_id")  # exact: get_search_results
    search_help_text = "Exact identifier (mo-…) or account external id."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
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

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        # (provider, identifier) is the unique index: naming every provider lets PostgreSQL
        # probe it once per provider. The account is resolved by its unique external id first,
        # so the OR is two index scans (BitmapOr), not a join filtered row by row.
        match = Q(provider__in=Provider.values, identifier=term)
        account_id = Account.objects.filter(external_id=term).values_list("pk", flat=True).first()
        if account_id is not None:
            match |= Q(account_id=account_id)
        return queryset.filter(match), False

    @admin.display(description="Payload sent")
    def payload_pretty(self, obj: PushLedgerEntry) -> str:
        return pretty_json(obj.payload) if obj.payload else "-"

    @admin.display(description="Provider's answer")
    def response_pretty(self, obj: PushLedgerEntry) -> str:
        return pretty_json(obj.response) if obj.response else "-"

    # "change" on a read-only admin: the rows stay read-only; the action (billing's
    # change_pushledgerentry permission) asks the push to send failed entries again.
    @admin.action(permissions=["change"], description="Send failed entries again")
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
    list_display = ("__str__", "account", "status", "total_display", "period_start", "period_end")
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
class SimulatedFaultConfigAdmin(AuditedHistoryAdmin):
    list_display = ("name", "active", "drop_rate", "duplicate_rate", "delay_rate", "skew_rate")
    list_filter = ("active",)


@admin.register(SimulatedUsageRecord)
class SimulatedUsageRecordAdmin(ReadOnlyModelAdmin):
    list_display = (
        "identifier",
        "customer_id",
        "event_name",
        "value",
        "timestamp",
        "dropped",
        "faults",
    )
    list_filter = ("dropped", "event_name")
    search_fields = ("identifier", "customer_id")  # exact: get_search_results
    search_help_text = "Exact identifier or customer id."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    ordering = ("-id",)

    def get_search_results(self, request, queryset, search_term):
        # Both columns lead an index; an exact OR of the two is a BitmapOr of index scans.
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(identifier=term) | Q(customer_id=term)), False


@admin.register(SimulatedCredit)
class SimulatedCreditAdmin(ReadOnlyModelAdmin):
    """Credits the simulated provider recorded (adjustments that reached it)."""

    list_display = (
        "credit_id",
        "customer_id",
        "amount_minor",
        "currency",
        "route",
        "invoice_id",
        "reason_code",
        "reference",
        "created_at",
    )
    list_filter = ("route", "currency")
    search_fields = ("credit_id", "customer_id", "reference")
    ordering = ("-id",)
