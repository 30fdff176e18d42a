"""Admin for credits and usage corrections, and the four-eyes policy.

Adjustments are never edited here (read_only): they are requested through the request page
(a form, a preview of the invoice before and after, then submit) and moved through their
states by the actions on their page and in the list, each under its own permission:

- request / withdraw: `adjustments.request_adjustment` (Support, Manager);
- apply / retry: `adjustments.apply_adjustment` (Support, Manager);
- approve / reject: `adjustments.approve_adjustment` (Manager; never one's own request, the
  service and the database refuse it).

Every action calls adjustments.services, which enforces the policy whoever calls.
"""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from adjustments.models import Adjustment, AdjustmentPolicy, ReasonCode
from adjustments.services import (
    Actor,
    AdjustmentError,
    adjustment_apply,
    adjustment_approve,
    adjustment_preview,
    adjustment_reject,
    adjustment_request,
    adjustment_withdraw,
)
from alerts.models import Alert
from billing.models import BillingPeriod
from billing.money import format_money
from metering.admin.common import AuditedHistoryAdmin
from metering.currencies import currency_minor_unit
from metering.models import Account, Meter
from reconciliation.models import Mismatch

S = Adjustment.Status


def _money(minor: int | None, currency: str) -> str:
    return "–" if minor is None else format_money(minor, currency)


class AdjustmentRequestForm(forms.Form):
    kind = forms.ChoiceField(choices=Adjustment.Kind.choices, initial="credit")
    amount = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_digits=20,
        decimal_places=4,
        help_text="Credits: in the account's currency (e.g. 25.00).",
    )
    period = forms.ModelChoiceField(
        queryset=BillingPeriod.objects.none(),
        required=False,
        help_text="Default: the open period (credits) or the period of the day (corrections).",
    )
    meter = forms.ModelChoiceField(queryset=Meter.objects.order_by("code"), required=False)
    day = forms.DateField(
        required=False,
        help_text="Corrections: the local day (YYYY-MM-DD) in the account's zone; empty for "
        "the whole period.",
    )
    corrected_quantity = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=38, decimal_places=12
    )
    reason_code = forms.ChoiceField(choices=ReasonCode.choices)
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), max_length=5000)
    ticket = forms.CharField(required=False, max_length=255)
    mismatch = forms.ModelChoiceField(queryset=Mismatch.objects.none(), required=False)
    alert = forms.ModelChoiceField(queryset=Alert.objects.none(), required=False)

    def __init__(self, *args, account: Account, **kwargs):
        super().__init__(*args, **kwargs)
        self.account = account
        self.fields["period"].queryset = BillingPeriod.objects.filter(account=account)
        self.fields["mismatch"].queryset = Mismatch.objects.filter(account=account)
        self.fields["alert"].queryset = Alert.objects.filter(account=account)
        self.fields["amount"].label = f"Amount ({account.currency})"

    def clean(self):
        data = super().clean()
        amount = data.get("amount")
        data["amount_minor"] = None
        if data.get("kind") == Adjustment.Kind.CREDIT:
            if amount is None:
                self.add_error("amount", "A credit needs an amount.")
            else:
                minor = amount.scaleb(currency_minor_unit(self.account.currency))
                if minor != minor.to_integral_value():
                    self.add_error(
                        "amount", f"{self.account.currency} has no smaller unit than that."
                    )
                else:
                    data["amount_minor"] = int(minor)
        return data

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        period = data.get("period")
        return {
            "kind": data["kind"],
            "amount_minor": data["amount_minor"],
            "meter": data.get("meter"),
            "period_start": period.start_date if period else None,
            "day": data.get("day"),
            "corrected_quantity": data.get("corrected_quantity"),
        }


class RejectForm(forms.Form):
    reason = forms.CharField(max_length=1000, required=False)


@admin.register(Adjustment)
class AdjustmentAdmin(AuditedHistoryAdmin):
    read_only = True
    change_form_template = "admin/adjustments/adjustment/change_form.html"
    list_display = (
        "id",
        "kind",
        "account",
        "amount_display",
        "reason_code",
        "status",
        "requester",
        "approved_by",
        "provider_route",
        "created_at",
    )
    list_filter = ("status", "kind", "reason_code", "provider_route")
    list_select_related = ("account", "requested_by", "requested_by_key", "approved_by")
    search_fields = ("account__external_id", "ticket", "note")
    date_hierarchy = "created_at"
    actions = ("approve_selected", "apply_selected", "withdraw_selected")
    # Money and times are shown formatted (currency, UTC) in the summary above the fields.
    readonly_fields = fields = [
        f.name
        for f in Adjustment._meta.fields
        if f.name
        not in {
            "amount_minor",
            "total_before_minor",
            "total_after_minor",
            "price_difference_minor",
            "created_at",
            "submitted_at",
            "expires_at",
            "decided_at",
            "applied_at",
        }
    ]

    # --- permissions: one Django permission per verb ---------------------------------------

    def has_request_permission(self, request) -> bool:
        return request.user.has_perm("adjustments.request_adjustment")

    def has_apply_permission(self, request) -> bool:
        return request.user.has_perm("adjustments.apply_adjustment")

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("adjustments.approve_adjustment")

    # --- columns ----------------------------------------------------------------------------

    @admin.display(description="Amount")
    def amount_display(self, obj: Adjustment) -> str:
        return obj.amount_text

    @admin.display(description="Requested by")
    def requester(self, obj: Adjustment) -> str:
        return obj.requester_label

    # --- list actions -----------------------------------------------------------------------

    def _each(self, request, queryset, call, done: str) -> None:
        ok = 0
        for adjustment in queryset:
            try:
                call(adjustment)
                ok += 1
            except AdjustmentError as exc:
                self.message_user(request, f"#{adjustment.pk}: {exc.message}", messages.ERROR)
        if ok:
            self.message_user(request, f"{ok} adjustment(s) {done}.", messages.SUCCESS)

    @admin.action(description="Approve (and apply) selected requests", permissions=["approve"])
    def approve_selected(self, request, queryset):
        actor = Actor(user=request.user)
        self._each(
            request,
            queryset,
            lambda a: adjustment_approve(adjustment=a, actor=actor),
            "approved",
        )

    @admin.action(description="Apply / retry selected approved adjustments", permissions=["apply"])
    def apply_selected(self, request, queryset):
        actor = Actor(user=request.user)
        self._each(
            request, queryset, lambda a: adjustment_apply(adjustment=a, actor=actor), "applied"
        )

    @admin.action(description="Withdraw selected requests (your own)", permissions=["request"])
    def withdraw_selected(self, request, queryset):
        actor = Actor(user=request.user)
        self._each(
            request,
            queryset,
            lambda a: adjustment_withdraw(adjustment=a, actor=actor),
            "withdrawn",
        )

    # --- pages --------------------------------------------------------------------------------

    def get_urls(self):
        return [
            path(
                "request/<int:account_id>/",
                self.admin_site.admin_view(self.request_view),
                name="adjustments_adjustment_request",
            ),
            path(
                "<int:pk>/act/",
                self.admin_site.admin_view(self.act_view),
                name="adjustments_adjustment_act",
            ),
            *super().get_urls(),
        ]

    def request_view(self, request, account_id: int):
        """The request form: fill it, preview the invoice before and after, then submit."""
        if not self.has_request_permission(request):
            raise PermissionDenied
        account = get_object_or_404(Account, pk=account_id)
        preview = None
        error = ""
        if request.method == "POST":
            form = AdjustmentRequestForm(request.POST, account=account)
            if form.is_valid():
                kwargs = form.service_kwargs()
                try:
                    if "_submit" in request.POST:
                        data = form.cleaned_data
                        adjustment, _ = adjustment_request(
                            account=account,
                            reason_code=data["reason_code"],
                            note=data["note"],
                            ticket=data.get("ticket", ""),
                            mismatch=data.get("mismatch"),
                            alert=data.get("alert"),
                            actor=Actor(user=request.user),
                            **kwargs,
                        )
                        self.message_user(
                            request,
                            f"{adjustment}: {adjustment.get_status_display().lower()}"
                            + (
                                " (waits for a Manager's approval)"
                                if adjustment.status == S.REQUESTED
                                else ""
                            )
                            + (
                                f" — {adjustment.provider_error}"
                                if adjustment.status == S.FAILED
                                else ""
                            ),
                            messages.SUCCESS if adjustment.status != S.FAILED else messages.WARNING,
                        )
                        return HttpResponseRedirect(
                            reverse("admin:adjustments_adjustment_change", args=[adjustment.pk])
                        )
                    preview = adjustment_preview(account=account, **kwargs)
                except AdjustmentError as exc:
                    error = exc.message
        else:
            form = AdjustmentRequestForm(
                account=account,
                initial={
                    "kind": request.GET.get("kind", "credit"),
                    "mismatch": request.GET.get("mismatch"),
                    "alert": request.GET.get("alert"),
                },
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Request a credit or usage correction for {account}",
            "account": account,
            "form": form,
            "preview": preview,
            "preview_rows": _preview_rows(preview) if preview else [],
            "error": error,
        }
        return TemplateResponse(request, "admin/adjustments/adjustment/request.html", context)

    def act_view(self, request, pk: int):
        if request.method != "POST":
            raise PermissionDenied
        adjustment = get_object_or_404(Adjustment, pk=pk)
        action = request.POST.get("action", "")
        needs = {"approve": "approve", "reject": "approve", "apply": "apply", "withdraw": "request"}
        if action not in needs or not getattr(self, f"has_{needs[action]}_permission")(request):
            raise PermissionDenied
        actor = Actor(user=request.user)
        form = RejectForm(request.POST)
        form.is_valid()
        try:
            if action == "approve":
                done = adjustment_approve(adjustment=adjustment, actor=actor)
            elif action == "reject":
                done = adjustment_reject(
                    adjustment=adjustment, actor=actor, reason=form.cleaned_data.get("reason", "")
                )
            elif action == "apply":
                done = adjustment_apply(adjustment=adjustment, actor=actor)
            else:
                done = adjustment_withdraw(adjustment=adjustment, actor=actor)
        except AdjustmentError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            level = messages.WARNING if done.status == S.FAILED else messages.SUCCESS
            text = f"{done}: {done.get_status_display().lower()}"
            if done.status == S.FAILED:
                text += f" — {done.provider_error}"
            self.message_user(request, text, level)
        return HttpResponseRedirect(reverse("admin:adjustments_adjustment_change", args=[pk]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        adjustment = self.get_object(request, object_id)
        if adjustment is not None and self.has_view_permission(request, adjustment):
            mine = adjustment.requested_by_id == request.user.pk
            is_requested = adjustment.status == S.REQUESTED
            may = {
                "approve": self.has_approve_permission(request) and is_requested and not mine,
                "reject": self.has_approve_permission(request)
                and adjustment.status in (S.REQUESTED, S.FAILED)
                and not mine,
                "apply": self.has_apply_permission(request)
                and adjustment.status in (S.APPROVED, S.FAILED),
                "withdraw": self.has_request_permission(request)
                and mine
                and adjustment.status in (S.DRAFT, S.REQUESTED),
            }
            extra_context.update(
                {
                    "adjustment": adjustment,
                    "may": may,
                    "may_act": any(may.values()),
                    "act_url": reverse("admin:adjustments_adjustment_act", args=[adjustment.pk]),
                    "summary_rows": _summary_rows(adjustment),
                }
            )
        return super().change_view(request, object_id, form_url, extra_context)


def _invoice_label(period) -> str:
    if period is not None and period.state == BillingPeriod.State.CLOSED:
        return "Invoice"
    return "Projected invoice (period end)"


def _utc(at) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC" if at else "–"


def _preview_rows(preview) -> list[tuple[str, str]]:
    cur = preview.currency
    label = _invoice_label(preview.period)
    rows = [
        ("Billing period", f"{preview.period} ({preview.period.timezone})"),
        (f"{label} before", _money(preview.total_before_minor, cur)),
        (f"{label} after", _money(preview.total_after_minor, cur)),
    ]
    if preview.original_quantity is not None:
        rows += [
            ("Usage before", f"{preview.original_quantity.normalize():f}"),
            ("Usage after", f"{preview.corrected_quantity.normalize():f}"),
            ("Price difference", _money(preview.price_difference_minor, cur)),
        ]
    else:
        rows.append(("Credit", _money(preview.amount_minor, cur)))
    rows.append(
        (
            "Approval",
            "needs a Manager (above the policy's limit of "
            f"{preview.policy.support_limit.normalize():f} {cur})"
            if preview.needs_approval
            else f"within the policy's limit of {preview.policy.support_limit.normalize():f} "
            f"{cur}: applied on submit",
        )
    )
    return rows


def _summary_rows(a: Adjustment) -> list[tuple[str, str]]:
    cur = a.currency
    label = _invoice_label(a.period)
    rows = [
        ("Status", a.get_status_display()),
        ("Kind", a.get_kind_display()),
        ("Account", str(a.account)),
        ("Reason", f"{a.get_reason_code_display()}: {a.note}"),
        ("Requested by", f"{a.requester_label}, {_utc(a.submitted_at or a.created_at)}"),
        (f"{label} before", _money(a.total_before_minor, cur)),
        (f"{label} after", _money(a.total_after_minor, cur)),
    ]
    if a.kind == Adjustment.Kind.USAGE_CORRECTION and a.original_quantity is not None:
        unit = a.meter.unit if a.meter_id else ""
        rows += [
            (
                "Usage",
                f"{a.original_quantity.normalize():f} → "
                f"{a.corrected_quantity.normalize():f} {unit}",
            ),
            ("Price difference", _money(a.price_difference_minor, cur)),
        ]
    else:
        rows.append(("Credit", _money(a.amount_minor, cur)))
    if a.approved_by_id:
        rows.append(("Approved by", f"{a.approved_by.get_username()}, {_utc(a.decided_at)}"))
    elif a.within_policy:
        rows.append(("Approved by", f"the policy (within the limit), {_utc(a.decided_at)}"))
    if a.applied_at:
        rows.append(("Applied", _utc(a.applied_at)))
    if a.rejection_reason:
        rows.append(("Rejected because", a.rejection_reason))
    if a.provider_route:
        rows.append(("Provider route", a.get_provider_route_display()))
    if a.provider_credit_id:
        rows.append(("Provider id", a.provider_credit_id))
    if a.provider_error:
        rows.append(("Provider error", a.provider_error))
    if a.expires_at and a.status == S.REQUESTED:
        rows.append(("Expires", _utc(a.expires_at)))
    return rows


def request_link(account: Account) -> str:
    """A link to the request page of the account (for the account hub)."""
    return format_html(
        '<a class="button" href="{}">Request a credit or usage correction</a>',
        reverse("admin:adjustments_adjustment_request", args=[account.pk]),
    )


@admin.register(AdjustmentPolicy)
class AdjustmentPolicyAdmin(AuditedHistoryAdmin):
    list_display = ("__str__", "support_limit", "expiry_days", "allow_carried_balance")
    fields = ("currency", "tier", "support_limit", "expiry_days", "allow_carried_balance")
