"""Usage events: append-only, tens of millions of rows (estimated counts, sortable only by
indexed columns, cheap filters)."""

from __future__ import annotations

import json
from datetime import timedelta
from math import ceil

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connection
from django.utils import timezone
from django.utils.functional import cached_property

from metering.admin.common import InputFilter, ReadOnlyModelAdmin, pretty_json
from metering.models import UsageEvent

# --- usage events: append-only, tens of millions of rows -------------------------------------


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a huge table.

    It counts at most `exact_up_to` + 1 rows (a LIMITed subquery, cheap with any filter); past
    that it takes the planner's row estimate, which costs one EXPLAIN and no table scan, and
    offers at most `max_estimated_pages` pages, since a deep OFFSET would read every row it
    skips. Past those, staff narrow the list with a filter.
    """

    exact_up_to = 10_000
    max_estimated_pages = 200
    is_estimate = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list.order_by()
        bounded = queryset[: self.exact_up_to + 1].count()
        self.is_estimate = bounded > self.exact_up_to
        if not self.is_estimate:
            return bounded
        sql, params = queryset.values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return max(int(plan[0]["Plan"]["Plan Rows"]), bounded)

    @cached_property
    def num_pages(self) -> int:
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        pages = ceil(max(1, self.count - self.orphans) / self.per_page)
        return min(pages, self.max_estimated_pages) if self.is_estimate else pages

    def page(self, number):
        number = self.validate_number(number)
        if not self.is_estimate:
            return super().page(number)
        # An estimate may be below the real count (the planner's guess on a fresh table is
        # often low): a page is then a full slice, never cut short at the estimated count.
        bottom = (number - 1) * self.per_page
        return self._get_page(self.object_list[bottom : bottom + self.per_page], number, self)


class SortableByOnlyChangeList(ChangeList):
    """Honours `sortable_by` for hand-written `?o=` URLs too, not only in the column headers."""

    def get_ordering_field(self, field_name):
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)


class AccountExternalIdFilter(InputFilter):
    """A text box, not a list: there can be far too many accounts to list them."""

    title = "account (external id)"
    parameter_name = "account_external_id"
    placeholder = "exact id"

    def queryset(self, request, queryset):
        value = self.text()
        if value:
            return queryset.filter(account__external_id=value)
        return queryset


class OccurredRecentlyFilter(admin.SimpleListFilter):
    """Cheap date ranges on the occurred_at index (a date hierarchy would scan for its dates)."""

    title = "occurred"
    parameter_name = "occurred"
    ranges = {"1d": ("Last 24 hours", 1), "7d": ("Last 7 days", 7), "30d": ("Last 30 days", 30)}

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _days) in self.ranges.items()]

    def queryset(self, request, queryset):
        if self.value() in self.ranges:
            days = self.ranges[self.value()][1]
            return queryset.filter(occurred_at__gte=timezone.now() - timedelta(days=days))
        return queryset


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyModelAdmin):
    """Read-only, for everyone: events are append-only (the database refuses UPDATE/DELETE too)."""

    list_display = ("transaction_id", "account", "meter", "occurred_at", "value", "kind", "is_late")
    list_select_related = ("account", "meter")
    list_filter = (AccountExternalIdFilter, "meter", OccurredRecentlyFilter, "kind", "is_late")
    # Newest first by occurrence: the time index, or (account, meter, time) when both are
    # filtered, yields rows in this order. Sorting by anything else would sort the whole table.
    sortable_by = ("id", "occurred_at")
    ordering = ("-occurred_at",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Facet counts would run a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    search_fields = ("=transaction_id",)
    search_help_text = "Exact transaction id, within one account (filter by account first)."
    raw_id_fields = ("account", "meter", "corrects")
    fields = (
        "account",
        "meter",
        "transaction_id",
        "source",
        "occurred_at",
        "received_at",
        "is_late",
        "value",
        "unique_value",
        "properties_pretty",
        "kind",
        "corrects",
        "content_hash_hex",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account", "meter")

    def get_changelist(self, request, **kwargs):
        return SortableByOnlyChangeList

    def get_search_results(self, request, queryset, search_term):
        # Transaction ids are unique per account and indexed only behind the account, so a
        # search without an account would scan the whole table.
        if not search_term:
            return queryset, False
        if not (
            request.GET.get(AccountExternalIdFilter.parameter_name)
            or request.GET.get("account__id__exact")
        ):
            self.message_user(
                request,
                "Filter by an account first: transaction ids are searched within one account.",
                messages.WARNING,
            )
            return queryset.none(), False
        return queryset.filter(transaction_id=search_term.strip()), False

    @admin.display(description="Properties")
    def properties_pretty(self, obj: UsageEvent) -> str:
        return pretty_json(obj.properties)

    @admin.display(description="Content hash")
    def content_hash_hex(self, obj: UsageEvent) -> str:
        return bytes(obj.content_hash).hex() if obj.content_hash is not None else "-"
