"""The alert queue, the alert page (context and chart), rules (with how their alerts were
labelled), billing holds and the notifications asked for.

Every action declares its permission (alerts.acknowledge_alert, snooze_alert, resolve_alert,
label_alert; alerts.release_billinghold), and a POSTed action the user may not run is a 403
(metering's AuditedHistoryAdmin). Alerts are changed only through alerts.services, each change
recorded in the history with the user and a reason.
"""

from __future__ import annotations

import datetime as dt

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from alerts import services
from alerts.charts import alert_band_figure
from alerts.models import DEFAULT_PARAMS, Alert, AlertNotification, AlertRule, BillingHold
from alerts.selectors import alert_series, rule_label_counts
from billing.money import format_money
from metering.admin import AuditedHistoryAdmin, ReadOnlyModelAdmin
from metering.admin_dashboard import figure_html, usage_link
from metering.decimals import decimal_text

SNOOZE_CHOICES = [("1", "1 day"), ("3", "3 days"), ("7", "7 days")]


class AlertActionForm(ActionForm):
    reason = forms.CharField(required=False, max_length=255, label="Reason")
    label = forms.ChoiceField(
        required=False, choices=[("", "—"), *Alert.Label.choices], label="Label"
    )
    snooze_days = forms.ChoiceField(required=False, choices=SNOOZE_CHOICES, label="Snooze")


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"

    def lookups(self, request, model_admin):
        return [("1", "Under a day"), ("7", "Under a week"), ("old", "A week or more")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() in ("1", "7"):
            return queryset.filter(opened_at__gte=now - dt.timedelta(days=int(self.value())))
        if self.value() == "old":
            return queryset.filter(opened_at__lt=now - dt.timedelta(days=7))
        return queryset


class TierFilter(admin.SimpleListFilter):
    title = "tier"
    parameter_name = "tier"

    def lookups(self, request, model_admin):
        tiers = (
            Alert.objects.exclude(account__tier="")
            .values_list("account__tier", flat=True)
            .distinct()
            .order_by("account__tier")
        )
        return [(t, t) for t in tiers]

    def queryset(self, request, queryset):
        return queryset.filter(account__tier=self.value()) if self.value() else queryset


class NotResolvedFilter(admin.SimpleListFilter):
    """The queue opens on what needs a person: every status but resolved."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Not resolved"), *Alert.Status.choices, ("all", "All")]

    def choices(self, changelist):
        value = self.value() or "active"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or "active"
        if value == "active":
            return queryset.exclude(status=Alert.Status.RESOLVED)
        if value == "all":
            return queryset
        return queryset.filter(status=value)


def _money(minor, currency) -> str:
    if minor is None:
        return "–"
    return format_money(minor, currency or "USD")


def _num(value) -> str:
    return "–" if value is None else decimal_text(value)


@admin.register(Alert)
class AlertAdmin(AuditedHistoryAdmin):
    list_display = (
        "id",
        "account",
        "meter",
        "kind",
        "level_badge",
        "status",
        "multiple",
        "observed_text",
        "opened_at",
    )
    list_display_links = ("id", "account")
    list_filter = (NotResolvedFilter, "kind", "level", TierFilter, AgeFilter, "label")
    list_select_related = ("account", "meter", "assignee")
    search_fields = ("=account__external_id", "account__name")
    search_help_text = "Account external id (exact) or name."
    ordering = ("-level", "-opened_at")
    action_form = AlertActionForm
    actions = (
        "acknowledge_selected",
        "snooze_selected",
        "resolve_selected",
        "label_selected",
    )
    readonly_fields = ("context",)
    fields = ("context",)
    change_form_template = "admin/alerts/alert/change_form.html"

    # --- permissions ------------------------------------------------------------------------
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # changed through the actions only

    def has_delete_permission(self, request, obj=None):
        return False

    def has_acknowledge_permission(self, request) -> bool:
        return request.user.has_perm("alerts.acknowledge_alert")

    def has_snooze_permission(self, request) -> bool:
        return request.user.has_perm("alerts.snooze_alert")

    def has_resolve_permission(self, request) -> bool:
        return request.user.has_perm("alerts.resolve_alert")

    def has_label_permission(self, request) -> bool:
        return request.user.has_perm("alerts.label_alert")

    # --- columns ----------------------------------------------------------------------------
    @admin.display(description="level", ordering="level")
    def level_badge(self, alert):
        color = "#ba2121" if alert.level == Alert.Level.CRITICAL else "#d08c00"
        return format_html('<strong style="color:{}">{}</strong>', color, alert.get_level_display())

    @admin.display(description="observed")
    def observed_text(self, alert):
        return _num(alert.observed)

    @admin.display(description="baseline")
    def baseline_text(self, alert):
        return _num(alert.baseline)

    # --- actions ----------------------------------------------------------------------------
    def _form_value(self, request, name: str) -> str:
        return (request.POST.get(name) or "").strip()

    def _each(self, request, queryset, do, done: str):
        count = 0
        for alert in queryset:
            try:
                do(alert)
                count += 1
            except ValueError as exc:
                self.message_user(request, f"Alert #{alert.pk}: {exc}", messages.ERROR)
        if count:
            self.message_user(request, f"{count} alerts {done}.", messages.SUCCESS)

    @admin.action(permissions=["acknowledge"], description="Acknowledge and assign to me")
    def acknowledge_selected(self, request, queryset):
        reason = self._form_value(request, "reason")
        self._each(
            request,
            queryset,
            lambda a: services.alert_acknowledge(alert=a, actor=request.user, reason=reason),
            "acknowledged",
        )

    @admin.action(permissions=["snooze"], description="Snooze (choose how long)")
    def snooze_selected(self, request, queryset):
        days = int(self._form_value(request, "snooze_days") or 1)
        until = timezone.now() + dt.timedelta(days=days)
        reason = self._form_value(request, "reason")
        self._each(
            request,
            queryset,
            lambda a: services.alert_snooze(
                alert=a, actor=request.user, until=until, reason=reason
            ),
            "snoozed",
        )

    @admin.action(permissions=["resolve"], description="Resolve (with a reason)")
    def resolve_selected(self, request, queryset):
        reason = self._form_value(request, "reason")
        if not reason:
            self.message_user(request, "Resolving needs a reason.", messages.ERROR)
            return
        label = self._form_value(request, "label")
        self._each(
            request,
            queryset,
            lambda a: services.alert_resolve(
                alert=a, actor=request.user, reason=reason, label=label
            ),
            "resolved",
        )

    @admin.action(permissions=["label"], description="Label (choose the label)")
    def label_selected(self, request, queryset):
        label = self._form_value(request, "label")
        if label not in Alert.Label.values:
            self.message_user(request, "Choose a label.", messages.ERROR)
            return
        reason = self._form_value(request, "reason")
        self._each(
            request,
            queryset,
            lambda a: services.alert_label(alert=a, actor=request.user, label=label, reason=reason),
            "labelled",
        )

    # --- the alert page ---------------------------------------------------------------------
    def get_urls(self):
        return [
            path(
                "<int:alert_id>/act/",
                self.admin_site.admin_view(self.act_view),
                name="alerts_alert_act",
            ),
            *super().get_urls(),
        ]

    def act_view(self, request, alert_id: int):
        """The alert page's buttons: one POSTed action, its permission checked."""
        if request.method != "POST":
            raise PermissionDenied
        alert = get_object_or_404(Alert, pk=alert_id)
        action = request.POST.get("do", "")
        checks = {
            "acknowledge": self.has_acknowledge_permission,
            "snooze": self.has_snooze_permission,
            "resolve": self.has_resolve_permission,
            "label": self.has_label_permission,
        }
        if action not in checks or not checks[action](request):
            raise PermissionDenied
        reason = self._form_value(request, "reason")
        label = self._form_value(request, "label")
        try:
            if action == "acknowledge":
                services.alert_acknowledge(alert=alert, actor=request.user, reason=reason)
                if label:
                    services.alert_label(alert=alert, actor=request.user, label=label)
            elif action == "snooze":
                days = int(self._form_value(request, "snooze_days") or 1)
                services.alert_snooze(
                    alert=alert,
                    actor=request.user,
                    until=timezone.now() + dt.timedelta(days=days),
                    reason=reason,
                )
            elif action == "resolve":
                services.alert_resolve(alert=alert, actor=request.user, reason=reason, label=label)
            else:
                if label not in Alert.Label.values:
                    raise ValueError("Choose a label.")
                services.alert_label(alert=alert, actor=request.user, label=label, reason=reason)
            self.message_user(request, f"Alert #{alert.pk}: done ({action}).", messages.SUCCESS)
        except ValueError as exc:
            self.message_user(request, f"Alert #{alert.pk}: {exc}", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:alerts_alert_change", args=[alert.pk]))

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("rule", "account", "meter", "assignee")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        alert = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if alert is not None:
            extra.update(self._page_context(request, alert))
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def _page_context(self, request, alert: Alert) -> dict:
        chart = None
        points = alert_series(alert)
        if points:
            unit = alert.meter.unit or "units"
            fig = alert_band_figure(
                points,
                alert_day=alert.day,
                title=f"{alert.meter.code}: daily usage ({alert.account.timezone}) and the "
                "expected band",
                unit=unit,
            )
            chart = figure_html(fig, div_id="alert-chart")
        return {
            "alert": alert,
            "chart": chart,
            "act_url": reverse("admin:alerts_alert_act", args=[alert.pk]),
            "labels": Alert.Label.choices,
            "snooze_choices": SNOOZE_CHOICES,
            "can": {
                "acknowledge": self.has_acknowledge_permission(request),
                "snooze": self.has_snooze_permission(request),
                "resolve": self.has_resolve_permission(request),
                "label": self.has_label_permission(request),
            },
        }

    @admin.display(description="What happened")
    def context(self, alert: Alert):
        rows = [
            (
                "Account",
                format_html(
                    "{} ({}) — {}",
                    alert.account,
                    alert.account.tier or "no tier",
                    usage_link(alert.account),
                ),
            ),
            ("Rule", f"{alert.rule.code} ({alert.rule.get_kind_display()})"),
            ("Meter", alert.meter.code if alert.meter_id else "–"),
            ("Level / status", f"{alert.get_level_display()} / {alert.get_status_display()}"),
            ("Day (local)", alert.day.isoformat()),
            ("Observed", _num(alert.observed)),
            ("Baseline (weekday median)", _num(alert.baseline)),
            ("Expected band", f"{_num(alert.band_low)} – {_num(alert.band_high)}"),
            ("Multiple", _num(alert.multiple)),
            ("This period's usage", _num(alert.period_usage)),
            ("Previous period's usage", _num(alert.previous_period_usage)),
            ("Limit", _num(alert.limit)),
            ("Projected invoice", _money(alert.projected_invoice_minor, alert.currency)),
            ("Previous invoice", _money(alert.previous_invoice_minor, alert.currency)),
            ("Assignee", str(alert.assignee or "–")),
            ("Snoozed until", str(alert.snoozed_until or "–")),
            ("Label", alert.get_label_display() or "–"),
            ("Resolution", alert.resolution_reason or "–"),
        ]
        body = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows)
        drivers = format_html_join(
            "",
            "<li>{} = <strong>{}</strong>: {} (usually {}, +{})</li>",
            (
                (
                    d.get("dimension"),
                    d.get("value"),
                    d.get("observed", "?"),
                    d.get("usual", "?"),
                    d.get("increase"),
                )
                for d in alert.drivers or []
            ),
        )
        return format_html(
            '<p class="alert-message">{}</p><table class="alert-context">{}</table>{}',
            alert.message,
            body,
            format_html("<p>What drove it:</p><ul>{}</ul>", drivers) if alert.drivers else "",
        )


@admin.register(AlertRule)
class AlertRuleAdmin(AuditedHistoryAdmin):
    list_display = (
        "code",
        "name",
        "kind",
        "scope",
        "tier",
        "account",
        "meter",
        "enabled",
        "hold",
        "alerts_total",
        "false_alarms",
    )
    list_filter = ("kind", "scope", "enabled", "hold")
    list_select_related = ("account", "meter")
    search_fields = ("code", "name")
    autocomplete_fields = ("account",)
    readonly_fields = ("label_summary", "defaults")
    fields = (
        "code",
        "name",
        "kind",
        "scope",
        "tier",
        "account",
        "meter",
        "params",
        "defaults",
        "enabled",
        "hold",
        "notify_customer",
        "email_to",
        "team_webhook_url",
        "label_summary",
    )

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None and self.has_change_permission(request, obj):
            fields.append("change_reason")
        return fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_alerts=Count("alerts"),
                n_false=Count("alerts", filter=Q(alerts__label=Alert.Label.FALSE_ALARM)),
            )
        )

    @admin.display(description="alerts", ordering="n_alerts")
    def alerts_total(self, rule):
        return rule.n_alerts

    @admin.display(description="false alarms", ordering="n_false")
    def false_alarms(self, rule):
        return rule.n_false

    @admin.display(description="How its alerts were labelled")
    def label_summary(self, rule):
        if rule.pk is None:
            return "–"
        counts = rule_label_counts(rule)
        names = dict(Alert.Label.choices) | {"unlabelled": "Unlabelled"}
        return format_html_join(
            "", "<div>{}: <strong>{}</strong></div>", ((names[k], v) for k, v in counts.items())
        )

    @admin.display(description="Default parameters of its kind")
    def defaults(self, rule):
        if not rule.kind:
            return "–"
        return format_html("<code>{}</code>", DEFAULT_PARAMS[rule.kind])


class HoldActionForm(ActionForm):
    reason = forms.CharField(required=False, max_length=255, label="Reason")
    mode = forms.ChoiceField(
        required=False, choices=BillingHold.ReleaseMode.choices, label="Release"
    )


@admin.register(BillingHold)
class BillingHoldAdmin(AuditedHistoryAdmin):
    list_display = ("account", "status", "opened_at", "alert", "released_at")
    list_filter = ("status",)
    list_select_related = ("account", "alert", "released_by")
    action_form = HoldActionForm
    actions = ("release_selected",)
    readonly_fields = (
        "account",
        "alert",
        "status",
        "reason",
        "opened_at",
        "released_at",
        "released_by",
        "release_mode",
        "release_reason",
    )
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_release_permission(self, request) -> bool:
        return request.user.has_perm("alerts.release_billinghold")

    @admin.action(permissions=["release"], description="Release (push what was held)")
    def release_selected(self, request, queryset):
        reason = (request.POST.get("reason") or "").strip()
        if not reason:
            self.message_user(request, "Releasing a hold needs a reason.", messages.ERROR)
            return
        mode = request.POST.get("mode") or BillingHold.ReleaseMode.PUSH
        for hold in queryset:
            services.billing_hold_release(hold=hold, actor=request.user, reason=reason, mode=mode)
        self.message_user(request, "Released.", messages.SUCCESS)


@admin.register(AlertNotification)
class AlertNotificationAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "channel", "event_type", "recipient", "alert", "handed_over")
    list_filter = ("channel", "event_type", "handed_over")
    list_select_related = ("alert",)
