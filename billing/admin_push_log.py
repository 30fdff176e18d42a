"""The push's own log in the back office, read-only: changes made to ledger entries by staff or
on a webhook (who, why, what), and each send of a chunk of entries with its outcomes."""

from __future__ import annotations

from django.contrib import admin

from billing.models import PushBatch, PushLedgerChange
from metering.admin import ReadOnlyModelAdmin


@admin.register(PushLedgerChange)
class PushLedgerChangeAdmin(ReadOnlyModelAdmin):
    list_display = ("changed_at", "entry", "source", "user", "reason", "changes")
    list_select_related = ("entry", "user")
    list_filter = ("source",)
    # Exact identifier: an indexed lookup on a table with one row per event.
    search_fields = ("=entry__identifier",)
    raw_id_fields = ("entry",)
    show_full_result_count = False


@admin.register(PushBatch)
class PushBatchAdmin(ReadOnlyModelAdmin):
    list_display = ("sent_at", "provider", "entries", "outcomes", "halted")
    list_filter = ("provider",)
    date_hierarchy = "sent_at"
    show_full_result_count = False
