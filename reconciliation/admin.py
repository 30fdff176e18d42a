"""The manager's reconciliation queue, the mismatch page, runs and thresholds.

Every action declares its permission (`reconciliation.acknowledge_mismatch`,
`reconciliation.resolve_mismatch`, `reconciliation.repush_mismatch`; re-pushing also needs the
push ledger's `billing.change_pushledgerentry`), and a POSTed action the user may not run is a
403 (AuditedHistoryAdmin). Mismatches are never edited through a form: every change goes through
a service that records the acting user and the reason in the history.
"""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from billing.money import format_money
from billing.pricing import format_quantity
from metering.admin import AuditedHistoryAdmin, ReadOnlyModelAdmin
from metering.admin.display import period_range
from metering.admin_dashboard import events_url, figure_html
from reconciliation import charts
from reconciliation import selectors as sel
from reconciliation.models import (
    Cause,
    Mismatch,
    ReconciliationRun,
    ReconciliationThreshold,
)
from reconciliation.services import (
    MANUAL_RESOLUTIONS,
    MismatchActionError,
    mismatch_acknowledge,
    mismatch_assign,
    mismatch_repush,
    mismatch_resolve,
)

PERMS = {
    "acknowledge": ("reconciliation.acknowledge_mismatch",),
    "assign": ("reconciliation.acknowledge_mismatch",),
    "resolve": ("reconciliation.resolve_mismatch",),
    "repush": ("reconciliation.repush_mismatch", "billing.change_pushledgerentry"),
}


def _may(request, action: str) -> bool:
    return request.user.has_perms(PERMS[action])


def _assignees():
    return get_user_model().objects.filter(is_active=True, is_staff=True).order_by("username")


class MismatchActionForm(ActionForm):
    """The changelist's action bar: the reason (always), a resolution and an assignee."""

    reason = forms.CharField(required=False, max_length=100, label="Reason")
    resolution = forms.ChoiceField(
        required=False,
        label="Resolution",
        choices=[("", "—")] + [(r.value, r.label) for r in MANUAL_RESOLUTIONS],
    )
    assignee = forms.ModelChoiceField(queryset=_assignees(), required=False, label="Assign to")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = _assignees()


class MismatchPageForm(forms.Form):
    """The mismatch page's action form."""

    action = forms.ChoiceField(choices=[(a, a) for a in PERMS])
    reason = forms.CharField(max_length=100)
    resolution = forms.ChoiceField(
        required=False, choices=[("", "—")] + [(r.value, r.label) for r in MANUAL_RESOLUTIONS]
    )
    assignee = forms.ModelChoiceField(queryset=_assignees(), required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = _assignees()


# --- filters -----------------------------------------------------------------------------------


class QueueFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "queue"

    def lookups(self, request, model_admin):
        return [
            ("open", "Open"),
            ("acknowledged", "Acknowledged"),
            ("resolved", "Resolved"),
            ("all", "All"),
        ]

    def choices(self, changelist):
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "To do (open or acknowledged)",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value()
        if value is None:
            return queryset.unresolved()
        if value == "all":
            return queryset
        return queryset.filter(status=value)


class CauseFilter(admin.SimpleListFilter):
    title = "cause (anywhere in the ranking)"
    parameter_name = "cause"

    def lookups(self, request, model_admin):
        return Cause.choices

    def queryset(self, request, queryset):
        if self.value() in Cause.values:
            return queryset.filter(causes__contains=[{"code": self.value()}])
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    BANDS = {"1d": (None, 1), "7d": (1, 7), "older": (7, None)}

    def lookups(self, request, model_admin):
        return [("1d", "Opened today"), ("7d", "1 to 7 days"), ("older", "Older than 7 days")]

    def queryset(self, request, queryset):
        band = self.BANDS.get(self.value())
        if band is None:
            return queryset
        now = timezone.now()
        newest, oldest = band
        if newest is not None:
            queryset = queryset.filter(opened_at__lte=now - timedelta(days=newest))
        if oldest is not None:
            queryset = queryset.filter(opened_at__gt=now - timedelta(days=oldest))
        return queryset


# --- the queue and the mismatch page -----------------------------------------------------------


def _read_window_note(name: str) -> str:
    """What the page says when the mismatch's platform reads usage back coarser than per day
    ([9])."""
    if sel.reads_per_day(name):
        return ""
    return (
        f"{sel.platform_label(name)} reads usage back per billing period only, never per day: "
        "the provider's number is the whole period's, the comparison and its causes are over "
        "the period, and the provider column below stays empty (the days show ours and what we "
        "reported)."
    )


def _common_window_note(names: list[str]) -> str:
    """What the side-by-side section says when a platform reads coarser than the others: the
    finest window all of them offer decides the drill-down."""
    coarse = [n for n in names if not sel.reads_per_day(n)]
    if len(names) < 2 or not coarse:
        return ""
    return (
        f"{', '.join(sel.platform_label(n) for n in coarse)} only offer"
        f"{'s' if len(coarse) == 1 else ''} the billing period as a window, so the platforms "
        "are compared side by side over the whole period (the finest window they have in "
        "common), not per UTC day."
    )


def _unit(mismatch: Mismatch) -> str:
    return mismatch.meter.unit or ("events" if mismatch.meter.aggregation == "count" else "units")


def _qty(value, unit: str) -> str:
    return "–" if value is None else f"{format_quantity(value)} {unit}".strip()


@admin.register(Mismatch)
class MismatchAdmin(AuditedHistoryAdmin):
    list_display = (
        "money_at_stake",
        "account",
        "meter",
        "platform",
        "period_text",
        "status",
        "cause_summary",
        "numbers",
        "age",
    )
    list_display_links = ("money_at_stake", "account")
    list_filter = (
        QueueFilter,
        CauseFilter,
        ("provider", admin.AllValuesFieldListFilter),
        "meter",
        ("account__tier", admin.AllValuesFieldListFilter),
        ("period_start", admin.AllValuesFieldListFilter),
        AgeFilter,
    )
    list_select_related = ("account", "meter", "assignee")
    search_fields = ("account__external_id", "account__name", "meter__code")
    ordering = ("-delta_amount_minor", "-id")
    show_full_result_count = False
    action_form = MismatchActionForm
    actions = ("acknowledge_selected", "assign_selected", "resolve_selected", "repush_selected")
    change_form_template = "admin/reconciliation/mismatch/change_form.html"
    change_list_template = "admin/reconciliation/mismatch/change_list.html"
    readonly_fields = (
        "account",
        "meter",
        "period",
        "status",
        "assignee",
        "resolution",
        "resolution_note",
        "opened_at",
        "acknowledged_at",
        "resolved_at",
        "last_checked_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # changes go through the actions, which record who and why

    def has_delete_permission(self, request, obj=None):
        return False

    def has_acknowledge_permission(self, request) -> bool:
        return _may(request, "acknowledge")

    def has_assign_permission(self, request) -> bool:
        return _may(request, "assign")

    def has_resolve_permission(self, request) -> bool:
        return _may(request, "resolve")

    def has_repush_permission(self, request) -> bool:
        return _may(request, "repush")

    # --- columns ---

    @admin.display(description="Money at stake", ordering="delta_amount_minor")
    def money_at_stake(self, obj: Mismatch) -> str:
        return format_money(obj.delta_amount_minor, obj.currency)

    @admin.display(description="Platform", ordering="provider")
    def platform(self, obj: Mismatch) -> str:
        return sel.platform_label(obj.provider)

    @admin.display(description="Period (last day included)", ordering="period_start")
    def period_text(self, obj: Mismatch) -> str:
        return period_range(obj.period_start, obj.period_end)

    @admin.display(description="Most likely cause")
    def cause_summary(self, obj: Mismatch) -> str:
        if not obj.causes:
            return "–"
        top = obj.causes[0]
        more = f" (+{len(obj.causes) - 1} more)" if len(obj.causes) > 1 else ""
        return f"{Cause(top['code']).label}{more}"

    @admin.display(description="Ours / reported / provider")
    def numbers(self, obj: Mismatch) -> str:
        unit = _unit(obj)
        # One per line, right-aligned: the column stays as narrow as its longest number.
        return format_html(
            '<span class="num" style="display:block">{}<br>{}<br>{}&nbsp;{}</span>',
            format_quantity(obj.ours),
            format_quantity(obj.reported),
            format_quantity(obj.provider_value),
            unit,
        )

    @admin.display(description="Age", ordering="opened_at")
    def age(self, obj: Mismatch) -> str:
        return timesince(obj.opened_at)

    # --- changelist actions ---

    def _run(self, request, queryset, action: str, call) -> None:
        form = MismatchActionForm(request.POST)
        form.is_valid()
        data = form.cleaned_data if hasattr(form, "cleaned_data") else {}
        reason = (data.get("reason") or "").strip()
        if not reason:
            self.message_user(request, "Give a reason for this action.", messages.ERROR)
            return
        done, errors = 0, []
        for mismatch in queryset.select_related("account", "meter"):
            try:
                call(mismatch, data, reason)
                done += 1
            except MismatchActionError as exc:
                errors.append(f"{mismatch}: {exc}")
        if done:
            self.message_user(request, f"{action}: {done} mismatch(es).", messages.SUCCESS)
        for error in errors:
            self.message_user(request, error, messages.WARNING)

    @admin.action(permissions=["acknowledge"], description="Acknowledge (assign to me)")
    def acknowledge_selected(self, request, queryset):
        self._run(
            request,
            queryset,
            "Acknowledged",
            lambda m, d, r: mismatch_acknowledge(mismatch=m, actor=request.user, reason=r),
        )

    # Assigning is part of acknowledging (one permission, acknowledge_mismatch).
    @admin.action(permissions=["acknowledge"], description="Assign to the person chosen")
    def assign_selected(self, request, queryset):
        self._run(
            request,
            queryset,
            "Assigned",
            lambda m, d, r: mismatch_assign(
                mismatch=m, assignee=d.get("assignee"), actor=request.user, reason=r
            ),
        )

    @admin.action(permissions=["resolve"], description="Resolve with the resolution chosen")
    def resolve_selected(self, request, queryset):
        self._run(
            request,
            queryset,
            "Resolved",
            lambda m, d, r: mismatch_resolve(
                mismatch=m, resolution=d.get("resolution") or "", actor=request.user, reason=r
            ),
        )

    @admin.action(permissions=["repush"], description="Re-push failed usage (push ledger)")
    def repush_selected(self, request, queryset):
        self._run(
            request,
            queryset,
            "Re-pushed",
            lambda m, d, r: mismatch_repush(mismatch=m, actor=request.user, reason=r),
        )

    # --- the mismatch page ---

    def get_urls(self):
        return [
            path(
                "<int:pk>/act/",
                self.admin_site.admin_view(self.act_view),
                name="reconciliation_mismatch_act",
            ),
            *super().get_urls(),
        ]

    def act_view(self, request, pk: int):
        if request.method != "POST":
            raise PermissionDenied
        mismatch = get_object_or_404(Mismatch.objects.select_related("account", "meter"), pk=pk)
        form = MismatchPageForm(request.POST)
        page = reverse("admin:reconciliation_mismatch_change", args=[pk])
        if not form.is_valid():
            self.message_user(request, f"Not done: {form.errors.as_text()}", messages.ERROR)
            return HttpResponseRedirect(page)
        action = form.cleaned_data["action"]
        if not _may(request, action):
            raise PermissionDenied
        reason = form.cleaned_data["reason"]
        try:
            if action == "acknowledge":
                mismatch_acknowledge(mismatch=mismatch, actor=request.user, reason=reason)
                text = "Acknowledged and assigned to you."
            elif action == "assign":
                assignee = form.cleaned_data["assignee"]
                mismatch_assign(
                    mismatch=mismatch, assignee=assignee, actor=request.user, reason=reason
                )
                text = f"Assigned to {assignee.get_username() if assignee else 'nobody'}."
            elif action == "resolve":
                mismatch_resolve(
                    mismatch=mismatch,
                    resolution=form.cleaned_data["resolution"],
                    actor=request.user,
                    reason=reason,
                )
                text = "Resolved."
            else:
                count = mismatch_repush(mismatch=mismatch, actor=request.user, reason=reason)
                text = (
                    f"{count} failed ledger entr(ies) will be sent at the next push, with their "
                    "original identifiers; pending entries go by themselves. The next "
                    "reconciliation resolves the mismatch if the numbers then match."
                )
        except MismatchActionError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, text, messages.SUCCESS)
        return HttpResponseRedirect(page)

    def changelist_view(self, request, extra_context=None):
        # Side by side at the top: each platform's to-do count (open or acknowledged), with a
        # link to its own queue ("Stripe: 2 mismatches, Orb: 0").
        base = reverse("admin:reconciliation_mismatch_changelist")
        extra_context = dict(extra_context or {})
        extra_context["platform_summary"] = [
            {
                "name": name,
                "label": sel.platform_label(name),
                "count": count,
                "url": f"{base}?provider__exact={name}",
                "read_only": sel.is_read_only_platform(name),
            }
            for name, count in sel.mismatch_counts_by_platform(Mismatch.objects.unresolved())
        ]
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        mismatch = self.get_object(request, object_id)
        if mismatch is not None and self.has_view_permission(request, mismatch):
            extra_context.update(self._page_context(request, mismatch))
        return super().change_view(request, object_id, form_url, extra_context)

    def _page_context(self, request, mismatch: Mismatch) -> dict:
        unit = _unit(mismatch)
        base = reverse("admin:metering_usageevent_changelist")

        def link(start, end):
            return events_url(
                account_id=mismatch.account_id,
                meter_id=mismatch.meter_id,
                start=start,
                end=end,
                base=base,
            )

        days = sel.mismatch_page_days(mismatch=mismatch, events_url=link)
        day_rows = [
            {
                "day": d.day,
                "in_period": d.in_period,
                "events": d.events,
                "events_url": d.events_url,
                "ours": _qty(d.ours, ""),
                "reported": _qty(d.reported, ""),
                "pending": _qty(d.pending, ""),
                "provider": _qty(d.provider, ""),
                "delta": _qty(d.delta, unit),
                "off": bool(d.delta),
            }
            for d in days
        ]
        boundaries = [
            mismatch.period_starts_at.isoformat(),
            mismatch.period_ends_at.isoformat(),
        ]
        figure = charts.mismatch_days_figure(days, unit=unit, boundaries=boundaries)
        chart = figure_html(figure, div_id="mismatch-days")
        platform = sel.platform_label(mismatch.provider)
        read_only = sel.is_read_only_platform(mismatch.provider)
        if read_only:
            # No push ledger of its own: its "reported" is ours (see reconciliation.services).
            reported = [("Reported", "n/a (read-only platform: Meterops pushes nothing to it)")]
        else:
            reported = [
                (f"Reported ({platform} took it)", _qty(mismatch.reported, unit)),
                ("Not taken yet (pending or failed)", _qty(mismatch.pending, unit)),
                ("Too old to send", _qty(mismatch.too_old, unit)),
            ]
        numbers = [
            ("Platform", platform + (" (read-only, side by side)" if read_only else "")),
            ("Ours (our events)", _qty(mismatch.ours, unit)),
            *reported,
            (f"{platform} recorded", _qty(mismatch.provider_value, unit)),
            (f"On {platform}'s invoice", _qty(mismatch.invoiced, unit)),
            ("Ours − provider", _qty(mismatch.delta, unit)),
            *(
                []
                if read_only
                else [
                    ("Ours − reported", _qty(mismatch.delta_reported, unit)),
                    ("Reported − provider", _qty(mismatch.delta_provider, unit)),
                ]
            ),
            ("Ours − invoiced", _qty(mismatch.delta_invoiced, unit)),
            ("Money at stake", format_money(mismatch.delta_amount_minor, mismatch.currency)),
        ]
        causes = [
            {
                "label": Cause(c["code"]).label,
                "code": c["code"],
                "share": f"{float(c['score']) * 100:.0f}%",
                "sentence": c["sentence"],
                "evidence": c["evidence"],
            }
            for c in mismatch.causes
        ]
        ledger = list(sel.ledger_entries_for_cell(mismatch=mismatch, limit=100))
        may = {action: _may(request, action) for action in PERMS}
        # Nothing of ours goes to a read-only platform: there is nothing to re-push.
        may["repush"] = may["repush"] and not read_only
        side = sel.mismatch_side_by_side(mismatch=mismatch)
        return {
            "mismatch": mismatch,
            "platform": platform,
            "read_only": read_only,
            "side_by_side": side,
            "side_rows": [
                {
                    "label": sel.platform_label(p.name),
                    "read_only": sel.is_read_only_platform(p.name),
                    "mismatch": p.mismatch,
                    "current": p.mismatch is not None and p.mismatch.pk == mismatch.pk,
                    "recorded": _qty(p.mismatch.provider_value, unit) if p.mismatch else "",
                    "delta": _qty(p.mismatch.delta, unit) if p.mismatch else "",
                }
                for p in side.platforms
            ],
            "side_days": [
                {
                    "day": d.day,
                    "ours": _qty(d.ours, ""),
                    "values": [_qty(v, "") for v in d.values],
                    "off": d.off,
                }
                for d in side.days
            ],
            "common_window_note": _common_window_note([p.name for p in side.platforms]),
            "window_note": _read_window_note(mismatch.provider),
            "unit": unit,
            "numbers": numbers,
            "causes": causes,
            "days": day_rows,
            "chart": chart,
            "ledger": [(entry, format_quantity(entry.value)) for entry in ledger],
            "ledger_url": f"{reverse('admin:billing_pushledgerentry_changelist')}"
            f"?account__id__exact={mismatch.account_id}&meter__id__exact={mismatch.meter_id}",
            "may": may,
            "may_act": any(may.values()),
            "act_url": reverse("admin:reconciliation_mismatch_act", args=[mismatch.pk]),
            "action_form": MismatchPageForm(),
            "history": mismatch.history.select_related("history_user").order_by("-history_date")[
                :20
            ],
            "period_text": format_html(
                "{} – {} ({}; UTC {} to {})",
                mismatch.period_start,
                mismatch.period_end,
                mismatch.period.timezone,
                mismatch.period_starts_at.strftime("%Y-%m-%d %H:%M"),
                mismatch.period_ends_at.strftime("%Y-%m-%d %H:%M"),
            ),
        }


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyModelAdmin):
    list_display = (
        "started_at",
        "account",
        "provider",
        "status",
        "cells_compared",
        "mismatches_opened",
        "mismatches_resolved",
        "duration_ms",
    )
    list_filter = ("provider", "status", "trigger")
    list_select_related = ("account",)
    search_fields = ("account__external_id",)
    show_full_result_count = False


@admin.register(ReconciliationThreshold)
class ReconciliationThresholdAdmin(AuditedHistoryAdmin):
    list_display = ("__str__", "meter", "absolute_units", "relative_percent", "money_minor")
    list_select_related = ("meter",)
    autocomplete_fields = ("meter",)
