"""The billing back office: plans with their prices, subscriptions, billing periods.

Every admin is an AuditedHistoryAdmin (metering.admin.common): each action declares the
permission it needs, a POSTed action the user may not run is a 403, and a change to an existing
record asks why; the reason is kept in its history with the acting user.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.utils import timezone
from django.utils.html import format_html, format_html_join

import billing.admin_projection  # noqa: F401  (registers the projected-invoice panel)
from billing import (
    admin_providers,  # noqa: F401  (registers the billing-provider admins)
    admin_push_log,  # noqa: F401  (registers the push's change and batch logs)
)
from billing.models import BillingPeriod, Plan, Price, Subscription
from billing.money import format_money
from billing.pricing import decimal_text
from billing.selectors import period_late_usage
from billing.services.periods import (
    PeriodHoldError,
    PeriodNotReady,
    PeriodOutsideSubscription,
    billing_period_begin_close,
    billing_period_ensure,
    billing_period_hold_release,
)
from billing.services.subscriptions import (
    subscription_cancel,
    subscription_check_new,
    subscription_create,
)
from metering.admin import AuditedHistoryAdmin, display
from metering.admin.display import period_range

# --- plans and prices ------------------------------------------------------------------------


class PriceInline(admin.StackedInline):
    model = Price
    extra = 0
    autocomplete_fields = ("meter",)
    fields = (
        ("meter", "name", "model"),
        ("included_units", "flat_fee"),
        "unit_price",
        ("package_size", "package_price"),
        "tiers",
        "provider_price_id",
    )


@admin.register(Plan)
class PlanAdmin(AuditedHistoryAdmin):
    list_display = (
        "code",
        "name",
        "currency",
        "flat_fee_display",
        "minimum_commitment_display",
        "price_count",
        "subscription_count",
        "active",
    )
    list_filter = ("active", "currency")
    search_fields = ("code", "name")
    readonly_fields = ("created_at", "updated_at")
    inlines = (PriceInline,)
    actions = ("deactivate_selected",)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                _prices=Count("prices", distinct=True),
                _subscriptions=Count("subscriptions", distinct=True),
            )
        )

    def get_readonly_fields(self, request, obj=None):
        # Subscriptions and their periods carry the plan's currency; it is fixed once created.
        if obj is not None:
            return ("code", "currency", *self.readonly_fields)
        return self.readonly_fields

    @admin.display(description="Flat fee per period", ordering="flat_fee_minor")
    def flat_fee_display(self, obj: Plan) -> str:
        return obj.flat_fee_display

    @admin.display(description="Minimum commitment", ordering="minimum_commitment_minor")
    def minimum_commitment_display(self, obj: Plan) -> str:
        return obj.minimum_commitment_display

    @admin.display(description="Prices", ordering="_prices")
    def price_count(self, obj: Plan) -> int:
        return obj._prices

    @admin.display(description="Subscriptions", ordering="_subscriptions")
    def subscription_count(self, obj: Plan) -> int:
        return obj._subscriptions

    def save_formset(self, request, form, formset, change):
        # Price changes made with the plan carry the plan's reason into their own history.
        reason = form.cleaned_data.get("change_reason")
        for price_form in formset.forms:
            price_form.instance._history_user = request.user
            if reason:
                price_form.instance._change_reason = reason
        super().save_formset(request, form, formset, change)

    @admin.action(permissions=["change"], description="Deactivate selected plans (no new sign-ups)")
    def deactivate_selected(self, request, queryset):
        changed = 0
        for plan in queryset.filter(active=True):
            plan.active = False
            plan._history_user = request.user
            plan._change_reason = "Deactivated from the plan list"
            plan.save(update_fields=["active", "updated_at"])
            changed += 1
        self.message_user(request, f"Deactivated {changed} plan(s).", messages.SUCCESS)


@admin.register(Price)
class PriceAdmin(AuditedHistoryAdmin):
    list_display = ("plan", "meter", "name", "model", "unit_price", "included_units")
    list_select_related = ("plan", "meter")
    list_filter = ("model", "plan")
    search_fields = ("plan__code", "meter__code", "name")
    autocomplete_fields = ("plan", "meter")
    readonly_fields = ("created_at", "updated_at")


# --- subscriptions ---------------------------------------------------------------------------


class SubscriptionAddForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ("account", "plan", "started_at", "billing_anchor_day", "provider_subscription_id")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["billing_anchor_day"].required = False
        self.fields["billing_anchor_day"].help_text = "Leave empty to use the start's day."

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        # The service's own checks, so the form shows them next to the fields.
        try:
            subscription_check_new(
                account=data["account"],
                plan=data["plan"],
                started_at=data["started_at"],
                billing_anchor_day=data.get("billing_anchor_day"),
            )
        except ValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        return data

    def _post_clean(self):
        # Model validation (the anchor may still be empty here) is left to the service.
        pass


@admin.register(Subscription)
class SubscriptionAdmin(AuditedHistoryAdmin):
    list_display = ("account", "plan", "status", "started_at", "provider_subscription_id")
    list_select_related = ("account", "plan")
    list_filter = ("status", "plan")
    search_fields = ("account__external_id", "account__name", "provider_subscription_id")
    autocomplete_fields = ("account", "plan")
    actions = ("open_current_period", "cancel_at_period_end")
    # Dates and anchor shape the billing periods; change them with the actions, not by hand.
    fixed_after_create = (
        "account",
        "plan",
        "started_at",
        "ended_at",
        "billing_anchor_day",
        "status",
        "created_at",
        "updated_at",
    )

    def get_readonly_fields(self, request, obj=None):
        return self.fixed_after_create if obj is not None else ()

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = SubscriptionAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        data = form.cleaned_data
        saved = subscription_create(
            account=data["account"],
            plan=data["plan"],
            started_at=data["started_at"],
            billing_anchor_day=data.get("billing_anchor_day"),
            provider_subscription_id=data.get("provider_subscription_id") or "",
            actor=request.user,
        )
        for field in saved._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding = False

    @admin.action(permissions=["change"], description="Open the current billing period")
    def open_current_period(self, request, queryset):
        opened = 0
        for subscription in queryset.select_related("account"):
            try:
                billing_period_ensure(subscription=subscription, actor=request.user)
                opened += 1
            except PeriodOutsideSubscription as exc:
                self.message_user(request, f"{subscription}: {exc}", messages.WARNING)
        self.message_user(request, f"{opened} subscription(s) have a current period.")

    @admin.action(permissions=["change"], description="Cancel at the end of the current period")
    def cancel_at_period_end(self, request, queryset):
        canceled = 0
        for subscription in queryset.select_related("account").filter(ended_at__isnull=True):
            try:
                period = billing_period_ensure(subscription=subscription, actor=request.user)
                subscription_cancel(
                    subscription=subscription, ended_at=period.end_date, actor=request.user
                )
                canceled += 1
            except (PeriodOutsideSubscription, ValidationError) as exc:
                self.message_user(request, f"{subscription}: {exc}", messages.WARNING)
        self.message_user(request, f"Canceled {canceled} subscription(s) at period end.")


# --- billing periods -------------------------------------------------------------------------


class PeriodActionForm(ActionForm):
    """The periods' action bar: a reason (required to release a hold)."""

    reason = forms.CharField(required=False, max_length=85, label="Reason")


class HeldFilter(admin.SimpleListFilter):
    title = "close hold"
    parameter_name = "held"

    def lookups(self, request, model_admin):
        return (("yes", "Held"), ("released", "Hold released"), ("no", "Not held"))

    def queryset(self, request, queryset):
        held = queryset.exclude(hold_reason="").exclude(state=BillingPeriod.State.CLOSED)
        if self.value() == "yes":
            return held.filter(hold_released_at__isnull=True)
        if self.value() == "released":
            return held.filter(hold_released_at__isnull=False)
        if self.value() == "no":
            return queryset.exclude(pk__in=held.values("pk"))
        return queryset


@admin.register(BillingPeriod)
class BillingPeriodAdmin(AuditedHistoryAdmin):
    """Read-mostly: periods are opened and closed by services; the only action starts closing."""

    list_display = (
        "account",
        "plan_code",
        "period_text",
        "state",
        "hold_display",
        "total_display",
        "closed_at",
    )
    list_select_related = ("account", "subscription__plan")
    list_filter = ("state", HeldFilter)
    search_fields = ("account__external_id", "account__name")
    date_hierarchy = "start_date"
    ordering = ("-starts_at",)
    actions = ("begin_closing", "release_hold")
    action_form = PeriodActionForm
    fields = (
        "account",
        "subscription",
        "start_date",
        "end_date",
        "timezone",
        "starts_at",
        "ends_at",
        "state",
        "hold_reason",
        "held_at",
        "hold_released_at",
        "hold_released_by",
        "currency",
        "total_display",
        "closed_at",
        "invoice_lines_pretty",
        "late_usage",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    @admin.display(description="Usage that arrived after the invoice")
    def late_usage(self, obj: BillingPeriod) -> str:
        if obj.state != BillingPeriod.State.CLOSED:
            return "- (the period is not invoiced yet; late usage still counts in it)"
        rows = period_late_usage(period=obj)
        if not rows:
            return "None: usage today equals what was invoiced."
        return format_html_join(
            "",
            "<p><strong>{}</strong>: invoiced {}, now {} ({}{}). Not added to this invoice; "
            "credit or bill it separately.</p>",
            (
                (
                    r.meter_code,
                    decimal_text(r.invoiced),
                    decimal_text(r.now),
                    "+" if r.difference > 0 else "",
                    decimal_text(r.difference),
                )
                for r in rows
            ),
        )

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Period (last day included)", ordering="start_date")
    def period_text(self, obj: BillingPeriod) -> str:
        return f"{period_range(obj.start_date, obj.end_date)} ({obj.timezone})"

    @admin.display(description="Hold")
    def hold_display(self, obj: BillingPeriod) -> str:
        if not obj.is_held:
            return "-"
        if obj.hold_released_at is not None:
            return "released (closes at the next roll)"
        first = obj.hold_reason.splitlines()[0]
        more = len(obj.hold_reason.splitlines()) - 1
        return f"held: {first}" + (f" (+{more} more)" if more else "")

    @admin.action(permissions=["change"], description="Release hold (let the period close)")
    def release_hold(self, request, queryset):
        # The reason comes from the action bar; the service checks the permission again and
        # records the user and the reason in the period's history.
        reason = (request.POST.get("reason") or "").strip()
        if not reason:
            self.message_user(request, "Give a reason for releasing the hold.", messages.ERROR)
            return
        released = 0
        for period in queryset:
            try:
                billing_period_hold_release(period=period, actor=request.user, reason=reason)
                released += 1
            except PeriodHoldError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"{released} hold(s) released; the next roll closes them.")

    @admin.display(description="Plan", ordering="subscription__plan__code")
    def plan_code(self, obj: BillingPeriod) -> str:
        return obj.subscription.plan.code

    @admin.display(description="Total", ordering="total_minor")
    def total_display(self, obj: BillingPeriod) -> str:
        return obj.total_display or "-"

    @admin.display(description="Invoice lines")
    def invoice_lines_pretty(self, obj: BillingPeriod) -> str:
        """The closed invoice as a table: one row per line, amounts right-aligned."""
        if not obj.invoice_lines:
            return "-"
        currency = obj.currency
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td class='num'>{}</td><td class='num'>{}</td>"
            "<td class='num'>{}</td><td>{}</td></tr>",
            (
                (
                    line.get("title") or line.get("kind", ""),
                    line.get("meter") or "–",
                    display.decimal(line["quantity"]) if line.get("quantity") else "–",
                    display.decimal(line["units_billed"]) if line.get("units_billed") else "–",
                    format_money(int(line.get("amount_minor") or 0), currency),
                    "; ".join(line.get("description") or []),
                )
                for line in obj.invoice_lines
            ),
        )
        return format_html(
            '<table class="invoice-lines"><thead><tr><th>Line</th><th>Meter</th>'
            '<th class="num">Quantity</th><th class="num">Units billed</th>'
            '<th class="num">Amount</th><th>How it was priced</th></tr></thead>'
            "<tbody>{}</tbody><tfoot><tr><th colspan='4'>Total</th>"
            "<th class='num'>{}</th><th></th></tr></tfoot></table>",
            rows,
            format_money(obj.total_minor or 0, currency),
        )

    @admin.action(permissions=["change"], description="Begin closing (ended periods only)")
    def begin_closing(self, request, queryset):
        # Only marks the intent (open -> closing) when the service's close guard passes (ended,
        # grace over, usage rolled up); otherwise says why. The hourly roll prices and closes.
        now = timezone.now()
        started = 0
        for period in queryset.filter(state=BillingPeriod.State.OPEN):
            try:
                billing_period_begin_close(period=period, actor=request.user, now=now)
                started += 1
            except PeriodNotReady as exc:
                self.message_user(request, f"{period}: not closed: {exc}", messages.WARNING)
        self.message_user(request, f"{started} period(s) are now closing.")
