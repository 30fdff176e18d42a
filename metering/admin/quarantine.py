"""The quarantine: events for an unknown account or meter, and their replay."""

from __future__ import annotations

from django.contrib import admin, messages

from metering.admin.common import AuditedHistoryAdmin, pretty_json
from metering.admin.events import EstimatedCountPaginator
from metering.models import QuarantinedEvent
from metering.services.quarantine import quarantine_replay

# --- quarantine ------------------------------------------------------------------------------


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(AuditedHistoryAdmin):
    list_display = (
        "transaction_id",
        "external_customer_id",
        "meter_code",
        "reason",
        "status",
        "occurred_at",
        "replayed_at",
    )
    list_filter = ("status", "reason")
    search_fields = ("=external_customer_id", "=meter_code", "=transaction_id")
    search_help_text = "Exact account external id, meter code or transaction id."
    # Newest first by id: received_at has no index here.
    ordering = ("-id",)
    actions = ("replay_selected",)
    # An unprovisioned account can fill the quarantine fast; don't count it on every page.
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fields = (
        "external_customer_id",
        "meter_code",
        "transaction_id",
        "source",
        "occurred_at",
        "received_at",
        "reason",
        "status",
        "replay_result",
        "replayed_at",
        "event",
        "properties_pretty",
        "payload_pretty",
    )
    readonly_fields = fields
    # Nothing is edited by hand: an event is replayed as received, or stays here.
    read_only = True

    def has_replay_permission(self, request) -> bool:
        return request.user.has_perm(self.action_permission("replay"))

    @admin.action(permissions=["replay"], description="Replay selected quarantined events")
    def replay_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        outcome = quarantine_replay(ids=ids, actor=request.user)
        parts = [
            f"{outcome.get('replayed', 0)} stored ({outcome.get('accepted', 0)} new, "
            f"{outcome.get('duplicate', 0)} already stored)"
        ]
        labels = {
            "conflict": "conflicts",
            "rejected": "rejected",
            "pending": "still waiting for their account or meter",
            "already_replayed": "replayed before",
        }
        parts += [f"{outcome[key]} {label}" for key, label in labels.items() if outcome.get(key)]
        failed = outcome.get("conflict", 0) + outcome.get("rejected", 0)
        self.message_user(
            request,
            f"Replayed {len(ids)} selected event(s): {', '.join(parts)}.",
            messages.WARNING if failed or outcome.get("pending") else messages.SUCCESS,
        )

    @admin.display(description="Properties")
    def properties_pretty(self, obj: QuarantinedEvent) -> str:
        return pretty_json(obj.properties)

    @admin.display(description="Payload as received")
    def payload_pretty(self, obj: QuarantinedEvent) -> str:
        return pretty_json(obj.payload)
