"""The alert queue, the alert page (context and chart), rules (with how their alerts were
labelled), and the notifications asked for (billing holds: alerts.admin_holds).

Every action declares its permission (alerts.acknowledge_alert, snooze_alert, resolve_alert,
label_alert; alerts.release_billinghold), and a POSTed action the user may not run is a 403
(metering's AuditedHistoryAdmin). Alerts are changed only through alerts.services, each change
recorded in the history with the user and a reason.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

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
from django.utils.safestring import mark_safe

# The billing hold admin lives in its own module (registered on import).
import alerts.admin_holds  # noqa: F401
from alerts import services
from alerts.charts import alert_band_figure
from alerts.models import DEFAULT_PARAMS, Alert, AlertNotification, AlertRule
from alerts.selectors import alert_series, rule_label_counts
from billing.money import format_money
from metering.admin import AuditedHistoryAdmin, ReadOnlyModelAdmin
from metering.admin_dashboard import figure_html, usage_link
from metering.decimals import decimal_text

SNOOZE_CHOICES = [("1", "1 day"), ("3", "3 days"), ("7", "7 days")]
# What people can do to an alert (each needs alerts.<action>_alert), and what was done.
ACTIONS = {
    "acknowledge": "acknowledged",
    "snooze": "snoozed",
    "resolve": "resolved",
    "label": "labelled",
}


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
    """An amount with its currency named: '$1,550.00 USD' (a '$' alone could be CAD)."""
    if minor is None:
        return "–"
    currency = currency or "USD"
    text = format_money(minor, currency)
    return text if currency in text else f"{text} {currency}"


def _num(value) -> str:
    return "–" if value is None else decimal_text(value)


def quantity_text(value, unit: str) -> str:
    """A usage quantity for people, grouped and with its unit: '12,500.5 API calls'."""
    if value is None:
        return "–"
    whole, dot, frac = decimal_text(value).partition(".")
    sign, whole = ("-", whole[1:]) if whole.startswith("-") else ("", whole)
    grouped = f"{int(whole):,}"
    return f"{sign}{grouped}{dot}{frac} {unit}".rstrip()


def _unit(alert: Alert) -> str:
    return (alert.meter.unit or "units") if alert.meter_id else "units"


def _utc_and_local(moment, zone: str) -> str:
    """A time as stored (UTC) and on the account's clock."""
    if moment is None:
        return "–"
    local = timezone.localtime(moment, ZoneInfo(zone))
    utc = timezone.localtime(moment, dt.UTC)
    return f"{utc:%Y-%m-%d %H:%M} UTC ({local:%Y-%m-%d %H:%M} {zone})"


@admin.register(Alert)
class AlertAdmin(AuditedHistoryAdmin):
    list_display = (
        "id",
        "account_text",
        "meter",
        "kind",
        "level_badge",
        "status_text",
        "observed_text",
        "baseline_text",
        "opened_text",
    )
    list_display_links = ("id", "account_text")
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

    @admin.display(description="account", ordering="account__name")
    def account_text(self, alert):
        account = alert.account
        if not account.name or account.name == account.external_id:
            return account.external_id
        return format_html("{}<br>{}", account.name, account.external_id)

    @admin.display(description="status", ordering="status")
    def status_text(self, alert):
        """Status, who has it and how it was labelled, in one column (the queue must fit
        1400 px with the sidebar open)."""
        lines = [alert.get_status_display()]
        if alert.assignee_id:
            lines.append(f"→ {alert.assignee}")
        if alert.label:
            lines.append(f"“{alert.get_label_display()}”")
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))

    @admin.display(description="observed", ordering="multiple")
    def observed_text(self, alert):
        observed = quantity_text(alert.observed, _unit(alert))
        if alert.multiple is None:
            return observed
        return format_html("{}<br>{}× the baseline", observed, _num(alert.multiple))

    @admin.display(description="opened", ordering="opened_at")
    def opened_text(self, alert):
        opened = timezone.localtime(alert.opened_at, dt.UTC)
        return format_html("{}<br>{} UTC", f"{opened:%Y-%m-%d}", f"{opened:%H:%M}")

    @admin.display(description="baseline")
    def baseline_text(self, alert):
        return quantity_text(alert.baseline, _unit(alert))

    # --- actions ----------------------------------------------------------------------------
    # The queue's bulk actions and the alert page's buttons are the same four actions: both
    # read the same form fields (reason, label, snooze_days) and run `_act` on each alert.
    def _form_value(self, request, name: str) -> str:
        return (request.POST.get(name) or "").strip()

    def _act_check(self, request, action: str) -> None:
        """Refuse (ValueError, said to the person) an action whose form fields cannot work
        for any alert, before touching one."""
        if action == "resolve" and not self._form_value(request, "reason"):
            raise ValueError("Resolving needs a reason.")
        if action == "label" and self._form_value(request, "label") not in Alert.Label.values:
            raise ValueError("Choose a label.")

    def _act(self, request, action: str, alert: Alert) -> None:
        """One action on one alert through alerts.services (ValueError when the alert's state
        does not allow it). Acknowledging also applies the chosen label, if any."""
        actor = request.user
        reason = self._form_value(request, "reason")
        label = self._form_value(request, "label")
        if action == "acknowledge":
            services.alert_acknowledge(alert=alert, actor=actor, reason=reason)
            if label:
                services.alert_label(alert=alert, actor=actor, label=label)
        elif action == "snooze":
            days = int(self._form_value(request, "snooze_days") or 1)
            until = timezone.now() + dt.timedelta(days=days)
            services.alert_snooze(alert=alert, actor=actor, until=until, reason=reason)
        elif action == "resolve":
            services.alert_resolve(alert=alert, actor=actor, reason=reason, label=label)
        else:
            services.alert_label(alert=alert, actor=actor, label=label, reason=reason)

    def _act_on_selected(self, request, queryset, action: str) -> None:
        try:
            self._act_check(request, action)
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        count = 0
        for alert in queryset:
            try:
                self._act(request, action, alert)
                count += 1
            except ValueError as exc:
                self.message_user(request, f"Alert #{alert.pk}: {exc}", messages.ERROR)
        if count:
            self.message_user(request, f"{count} alerts: {ACTIONS[action]}.", messages.SUCCESS)

    @admin.action(permissions=["acknowledge"], description="Acknowledge and assign to me")
    def acknowledge_selected(self, request, queryset):
        self._act_on_selected(request, queryset, "acknowledge")

    @admin.action(permissions=["snooze"], description="Snooze (choose how long)")
    def snooze_selected(self, request, queryset):
        self._act_on_selected(request, queryset, "snooze")

    @admin.action(permissions=["resolve"], description="Resolve (with a reason)")
    def resolve_selected(self, request, queryset):
        self._act_on_selected(request, queryset, "resolve")

    @admin.action(permissions=["label"], description="Label (choose the label)")
    def label_selected(self, request, queryset):
        self._act_on_selected(request, queryset, "label")

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
        if action not in ACTIONS or not getattr(self, f"has_{action}_permission")(request):
            raise PermissionDenied
        try:
            self._act_check(request, action)
            self._act(request, action, alert)
            self.message_user(request, f"Alert #{alert.pk}: {ACTIONS[action]}.", messages.SUCCESS)
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
            fig = alert_band_figure(
                points,
                alert_day=alert.day,
                title=f"{alert.meter.code}: daily usage and the expected band",
                unit=_unit(alert),
                zone=alert.account.timezone,
            )
            chart = figure_html(fig, div_id="alert-chart")
        return {
            "alert": alert,
            "chart": chart,
            "act_url": reverse("admin:alerts_alert_act", args=[alert.pk]),
            "labels": Alert.Label.choices,
            "snooze_choices": SNOOZE_CHOICES,
            "can": {
                action: getattr(self, f"has_{action}_permission")(request) for action in ACTIONS
            },
        }

    @admin.display(description="What happened")
    def context(self, alert: Alert):
        unit, zone = _unit(alert), alert.account.timezone
        band = (
            "–"
            if alert.band_low is None and alert.band_high is None
            else f"{quantity_text(alert.band_low, '').strip()} – "
            f"{quantity_text(alert.band_high, unit)}"
        )
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
            ("Meter", f"{alert.meter.code} (in {unit})" if alert.meter_id else "–"),
            ("Level / status", f"{alert.get_level_display()} / {alert.get_status_display()}"),
            ("Day", f"{alert.day.isoformat()} (local day, {zone})"),
            ("Opened", _utc_and_local(alert.opened_at, zone)),
            ("Observed", quantity_text(alert.observed, unit)),
            ("Baseline (weekday median)", quantity_text(alert.baseline, unit)),
            ("Expected band", band),
            (
                "Multiple",
                "–" if alert.multiple is None else f"{_num(alert.multiple)}× the baseline",
            ),
            ("This period's usage", quantity_text(alert.period_usage, unit)),
            ("Previous period's usage", quantity_text(alert.previous_period_usage, unit)),
            ("Limit", quantity_text(alert.limit, unit)),
            ("Projected invoice", _money(alert.projected_invoice_minor, alert.currency)),
            ("Previous invoice", _money(alert.previous_invoice_minor, alert.currency)),
            ("Assignee", str(alert.assignee or "–")),
            ("Snoozed until", _utc_and_local(alert.snoozed_until, zone)),
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
                    _driver_quantity(d.get("observed"), unit),
                    _driver_quantity(d.get("usual"), unit),
                    _driver_quantity(d.get("increase"), unit),
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


def _driver_quantity(value, unit: str) -> str:
    """A driver's number (stored as text in JSON) with the meter's unit."""
    try:
        return quantity_text(Decimal(str(value)), unit)
    except (InvalidOperation, TypeError, ValueError):
        return "?"


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


@admin.register(AlertNotification)
class AlertNotificationAdmin(ReadOnlyModelAdmin):
    list_display = ("created_at", "channel", "event_type", "recipient", "alert", "handed_over")
    list_filter = ("channel", "event_type", "handed_over")
    list_select_related = ("alert",)
