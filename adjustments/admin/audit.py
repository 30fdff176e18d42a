"""Auditor views of the audit log: the log itself (filters by user, reason, record type and
date), a per-account timeline, and a streamed CSV / JSON Lines export of a date range.

Read-only for everyone, superusers included: the log is written only by the capture
(adjustments.audit), and the database refuses UPDATE and DELETE anyway.
- The log and its entries: `adjustments.view_auditentry` (Auditor, Manager).
- The export: `adjustments.export_auditentry` (Auditor, Manager).
- An account's timeline: `adjustments.view_timeline_auditentry` (Auditor, Manager, Support).
"""

from __future__ import annotations

import datetime as dt

from django.apps import apps
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from adjustments.audit import (
    audit_account_timeline,
    audit_export_csv,
    audit_export_jsonl,
    audit_export_rows,
    audit_record_types,
)
from adjustments.models import AuditEntry
from metering.admin import EstimatedCountPaginator
from metering.admin.common import InputFilter, ReadOnlyModelAdmin, pretty_json
from metering.models import Account


class ActorFilter(InputFilter):
    title = "user or API key"
    parameter_name = "actor"
    placeholder = "username, key name or system"

    def queryset(self, request, queryset):
        if self.text():
            return queryset.filter(actor_label__icontains=self.text())
        return queryset


class ReasonFilter(InputFilter):
    title = "reason"
    parameter_name = "reason"
    placeholder = "words in the reason"

    def queryset(self, request, queryset):
        if self.text():
            return queryset.filter(reason__icontains=self.text())
        return queryset


def _parse_day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        return None


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


class FromDayFilter(InputFilter):
    title = "from day (UTC, included)"
    parameter_name = "from"
    placeholder = "YYYY-MM-DD"

    def queryset(self, request, queryset):
        day = _parse_day(self.text()) if self.text() else None
        return queryset.filter(created_at__gte=_day_start(day)) if day else queryset


class ToDayFilter(InputFilter):
    title = "to day (UTC, included)"
    parameter_name = "to"
    placeholder = "YYYY-MM-DD"

    def queryset(self, request, queryset):
        day = _parse_day(self.text()) if self.text() else None
        if day:
            return queryset.filter(created_at__lt=_day_start(day + dt.timedelta(days=1)))
        return queryset


class RecordTypeFilter(admin.SimpleListFilter):
    """The history-tracked models (from the code, not a scan of the log)."""

    title = "record type"
    parameter_name = "record"

    def lookups(self, request, model_admin):
        return audit_record_types()

    def queryset(self, request, queryset):
        if self.value() and "." in self.value():
            app_label, model = self.value().split(".", 1)
            return queryset.filter(app_label=app_label, model=model)
        return queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyModelAdmin):
    list_display = ("seq", "when", "who", "what", "reason", "changes")
    list_display_links = ("seq",)
    list_filter = (
        ActorFilter,
        ReasonFilter,
        RecordTypeFilter,
        FromDayFilter,
        ToDayFilter,
        "action",
        "origin",
    )
    sortable_by = ("seq",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Facet counts would count the whole log once per filter choice.
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    # No actions: nothing to do to an audit entry.
    actions = None
    change_list_template = "admin/adjustments/auditentry/change_list.html"
    fields = (
        "seq",
        "when",
        "actor_kind",
        "actor_user_id",
        "actor_label",
        "origin",
        "origin_detail",
        "app_label",
        "model",
        "object_pk",
        "account_id",
        "action",
        "reason",
        "before_json",
        "after_json",
        "history_id",
        "prev_hash",
        "hash",
    )
    readonly_fields = fields

    # --- permissions: read-only, the export and the timeline under their own permission -----

    def has_export_permission(self, request) -> bool:
        return request.user.has_perm(self.action_permission("export"))

    def has_view_timeline_permission(self, request) -> bool:
        return request.user.has_perm(self.action_permission("view_timeline"))

    # --- columns ----------------------------------------------------------------------------

    @admin.display(description="when (UTC)", ordering="seq")
    def when(self, obj: AuditEntry):
        at = obj.created_at.astimezone(dt.UTC)
        return format_html("{}<br>{} UTC", at.strftime("%Y-%m-%d"), at.strftime("%H:%M:%S"))

    @admin.display(description="who (from where)")
    def who(self, obj: AuditEntry) -> str:
        return f"{obj.actor_label} ({obj.get_origin_display()})"

    @admin.display(description="what")
    def what(self, obj: AuditEntry):
        try:
            noun = apps.get_model(obj.app_label, obj.model)._meta.verbose_name
        except LookupError:  # a model since removed: its stored name will do
            noun = f"{obj.app_label}.{obj.model}"
        record = f"{obj.action} {noun} {obj.object_pk}"
        if obj.account_id is None:
            return record
        return format_html(
            '{}<br><a href="{}">timeline of account {}</a>',
            record,
            reverse("admin:adjustments_auditentry_timeline", args=[obj.account_id]),
            obj.account_id,
        )

    @admin.display(description="before → after")
    def changes(self, obj: AuditEntry) -> str:
        if obj.action != AuditEntry.Action.CHANGED:
            return f"{len(obj.after or obj.before)} fields"
        parts = [
            f"{name}: {obj.before.get(name)!s} → {obj.after.get(name)!s}" for name in obj.after
        ]
        text = "; ".join(parts) or "no field changed"
        return text if len(text) <= 160 else text[:159] + "…"

    @admin.display(description="before")
    def before_json(self, obj: AuditEntry):
        return pretty_json(obj.before)

    @admin.display(description="after")
    def after_json(self, obj: AuditEntry):
        return pretty_json(obj.after)

    # --- pages ------------------------------------------------------------------------------

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "may_export": self.has_export_permission(request),
            "export_url": reverse("admin:adjustments_auditentry_export"),
            "today": dt.datetime.now(dt.UTC).date().isoformat(),
            "month_ago": (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)).isoformat(),
        }
        return super().changelist_view(request, extra_context)

    def get_urls(self):
        return [
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="adjustments_auditentry_export",
            ),
            path(
                "timeline/<int:account_id>/",
                self.admin_site.admin_view(self.timeline_view),
                name="adjustments_auditentry_timeline",
            ),
            *super().get_urls(),
        ]

    def export_view(self, request):
        """GET ?from=YYYY-MM-DD&to=YYYY-MM-DD&format=csv|jsonl: the entries of those UTC days
        (both included), streamed in chain order, read in chunks so memory stays flat."""
        if not self.has_export_permission(request):
            raise PermissionDenied
        start = _parse_day(request.GET.get("from", ""))
        end = _parse_day(request.GET.get("to", ""))
        fmt = request.GET.get("format", "csv")
        if start is None or end is None or end < start or fmt not in ("csv", "jsonl"):
            return TemplateResponse(
                request,
                "admin/adjustments/auditentry/export_error.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Export the audit log",
                    "message": "Give a from and a to day (YYYY-MM-DD, UTC, to on or after from) "
                    "and a format (csv or jsonl).",
                },
                status=400,
            )
        queryset = AuditEntry.objects.filter(
            created_at__gte=_day_start(start),
            created_at__lt=_day_start(end + dt.timedelta(days=1)),
        )
        rows = audit_export_rows(queryset)
        if fmt == "csv":
            body, content_type = audit_export_csv(rows), "text/csv; charset=utf-8"
        else:
            body, content_type = audit_export_jsonl(rows), "application/x-ndjson; charset=utf-8"
        response = StreamingHttpResponse(body, content_type=content_type)
        filename = f"audit-log_{start.isoformat()}_{end.isoformat()}.{fmt}"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    def timeline_view(self, request, account_id: int):
        if not self.has_view_timeline_permission(request):
            raise PermissionDenied
        account = Account.objects.filter(pk=account_id).first()
        if account is None and not AuditEntry.objects.for_account(account_id).exists():
            raise Http404("No such account.")
        start = _parse_day(request.GET.get("from", ""))
        end = _parse_day(request.GET.get("to", ""))
        timeline = audit_account_timeline(
            account_id=account_id,
            timezone_name=account.timezone if account else "UTC",
            start=_day_start(start) if start else None,
            end=_day_start(end + dt.timedelta(days=1)) if end else None,
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Audit timeline of {account.external_id if account else account_id}",
            "account": account,
            "account_id": account_id,
            "timeline": timeline,
            "from": request.GET.get("from", ""),
            "to": request.GET.get("to", ""),
            "may_view_log": self.has_view_permission(request),
            "opts": self.opts,
        }
        return TemplateResponse(request, "admin/adjustments/auditentry/timeline.html", context)
