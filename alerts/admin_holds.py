"""The billing hold admin: the list, the hold's page (what is held, how close it is to the
provider's 35-day window, and the release form) and the release itself.

Release needs alerts.release_billinghold (the Manager role): the list's action declares it,
the page's form posts to a view that checks it, and alerts.services.billing_hold_release
checks it again whatever the caller. The panel (templates/admin/alerts/billinghold/_panel.html,
context from `hold_panel_context`) is shown on the hold's page and on the account hub.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme

from alerts import services
from alerts.models import BillingHold
from alerts.selectors import hold_window
from billing.money import currency_exponent
from metering.admin import AuditedHistoryAdmin

RELEASE_PERMISSION = services.RELEASE_PERMISSION


class HoldActionForm(ActionForm):
    reason = forms.CharField(required=False, max_length=255, label="Reason")
    mode = forms.ChoiceField(
        required=False, choices=BillingHold.ReleaseMode.choices, label="Release"
    )
    credit_amount = forms.CharField(
        required=False, max_length=24, label="Credit (account's currency, to open a credit)"
    )


def _credit_minor(text: str, currency: str) -> int | None:
    """The release form's credit ("120.50" in the account's currency) in minor units; None
    when empty. An amount finer than the currency's minor unit is refused, never rounded."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount.") from None
    minor = amount.scaleb(currency_exponent(currency))
    if not amount.is_finite() or minor != minor.to_integral_value():
        raise ValueError(f"{text} {currency} is not a whole number of the currency's minor unit.")
    return int(minor)


def hold_panel_context(request, hold: BillingHold | None, *, next_url: str = "") -> dict:
    """What the hold panel shows: the hold, its window and, for a Manager, the release form."""
    if hold is None:
        return {"billing_hold": None}
    active = hold.status == BillingHold.Status.ACTIVE
    return {
        "billing_hold": hold,
        "hold_window": hold_window(hold) if active else None,
        "hold_can_release": active and request.user.has_perm(RELEASE_PERMISSION),
        "hold_release_url": reverse("admin:alerts_billinghold_release", args=[hold.pk]),
        "hold_url": reverse("admin:alerts_billinghold_change", args=[hold.pk]),
        "hold_modes": BillingHold.ReleaseMode.choices,
        "hold_next": next_url,
    }


@admin.register(BillingHold)
class BillingHoldAdmin(AuditedHistoryAdmin):
    list_display = (
        "account",
        "status",
        "opened_at",
        "alert",
        "released_at",
        "released_by",
        "release_mode",
    )
    list_filter = ("status", "release_mode")
    list_select_related = ("account", "alert", "released_by")
    search_fields = ("account__external_id", "account__name")
    action_form = HoldActionForm
    actions = ("release_selected",)
    change_form_template = "admin/alerts/billinghold/change_form.html"
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
        return request.user.has_perm(RELEASE_PERMISSION)

    def _release(
        self, request, hold: BillingHold, reason: str, mode: str, credit_amount: str = ""
    ) -> bool:
        try:
            services.billing_hold_release(
                hold=hold,
                actor=request.user,
                reason=reason,
                mode=mode,
                credit_amount_minor=_credit_minor(credit_amount, hold.account.currency),
            )
        except ValueError as exc:
            self.message_user(request, f"{hold}: {exc}", messages.ERROR)
            return False
        return True

    @admin.action(permissions=["release"], description="Release (with a reason)")
    def release_selected(self, request, queryset):
        reason = (request.POST.get("reason") or "").strip()
        if not reason:
            self.message_user(request, "Releasing a hold needs a reason.", messages.ERROR)
            return
        mode = request.POST.get("mode") or BillingHold.ReleaseMode.PUSH
        if mode not in BillingHold.ReleaseMode.values:
            self.message_user(request, "Choose how to release.", messages.ERROR)
            return
        released = sum(
            self._release(request, hold, reason, mode, request.POST.get("credit_amount", ""))
            for hold in queryset.filter(status=BillingHold.Status.ACTIVE)
        )
        self.message_user(
            request,
            f"Released {released} hold(s); the next push sends what they held.",
            messages.SUCCESS,
        )

    def get_urls(self):
        return [
            path(
                "<int:hold_id>/release/",
                self.admin_site.admin_view(self.release_view),
                name="alerts_billinghold_release",
            ),
            *super().get_urls(),
        ]

    def release_view(self, request, hold_id: int):
        """The release form of the hold's page and of the account hub (POST only)."""
        if request.method != "POST" or not self.has_release_permission(request):
            raise PermissionDenied
        hold = get_object_or_404(BillingHold.objects.select_related("account"), pk=hold_id)
        reason = (request.POST.get("reason") or "").strip()
        mode = request.POST.get("mode") or BillingHold.ReleaseMode.PUSH
        if mode not in BillingHold.ReleaseMode.values:
            self.message_user(request, "Choose how to release.", messages.ERROR)
        elif self._release(request, hold, reason, mode, request.POST.get("credit_amount", "")):
            self.message_user(
                request,
                f"Billing hold on {hold.account.external_id} released "
                f"({BillingHold.ReleaseMode(mode).label.lower()}); the next push sends what "
                "it held.",
                messages.SUCCESS,
            )
        target = request.POST.get("next") or ""
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = reverse("admin:alerts_billinghold_change", args=[hold.pk])
        return HttpResponseRedirect(target)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        hold = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if hold is not None:
            extra.update(hold_panel_context(request, hold))
            extra["hold_on_own_page"] = True
        return super().change_view(request, object_id, form_url, extra_context=extra)
