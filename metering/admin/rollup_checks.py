"""Rollup self-checks (read-only)."""

from __future__ import annotations

from django.contrib import admin

from metering.admin.common import ReadOnlyModelAdmin, pretty_json
from metering.models import RollupCheck

# --- rollup self-checks ----------------------------------------------------------------------


@admin.register(RollupCheck)
class RollupCheckAdmin(ReadOnlyModelAdmin):
    """What the nightly self-check compared, what drifted and what it repaired. Read-only:
    rows are written by the self-check service only."""

    list_display = (
        "started_at",
        "status",
        "since",
        "until",
        "buckets_checked",
        "drifted",
        "repaired",
    )
    list_filter = ("status",)
    date_hierarchy = None
    readonly_fields = (*list_display, "details_pretty")
    exclude = ("details",)

    @admin.display(description="Drifted buckets (sample)")
    def details_pretty(self, obj: RollupCheck) -> str:
        return pretty_json(obj.details) if obj.details else "-"
