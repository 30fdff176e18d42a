"""The account hub: metering's account admin, plus what the other apps know about the account.

Metering owns accounts and their usage page; it names no other app. This admin replaces it in
the admin site. The account's page (the change view) is the hub: above the fold, why the bill
changed in one sentence (billing.explain.bill_change_sentence), the projected invoice against
the previous one, open alerts, open mismatches, a billing hold, adjustments and the actions the
user's role allows (backoffice.hub); below, the details in tabs whose content is fetched from
`<id>/hub/<section>/` when a tab is opened, so the first paint never waits for a chart or for
the billing platform (the "platform preview" tab, where the platform previews the upcoming
invoice). A search that finds exactly one account opens its page.
The account's active billing hold comes with its panel (alerts.admin_holds: the window warning
and, for a Manager, the release form).
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from alerts.admin_holds import hold_panel_context
from alerts.selectors import active_hold
from backoffice.hub import account_hub, platform_preview_section
from billing.admin_projection import may_view_projection, projection_panel_context
from billing.platform_preview import platform_has_preview
from metering.admin import AccountAdmin
from metering.admin_dashboard import account_usage_view
from metering.models import Account

SECTIONS = {
    "charts": "admin/backoffice/account/_section_charts.html",
    "events": "admin/backoffice/account/_section_events.html",
    "invoice": "admin/backoffice/account/_section_invoice.html",
    "preview": "admin/backoffice/account/_section_preview.html",
}


class AccountHubAdmin(AccountAdmin):
    usage_template = "admin/backoffice/account/usage.html"
    change_form_template = "admin/backoffice/account/change_form.html"

    def get_urls(self):
        section = self.admin_site.admin_view(self.section_view)
        return [
            path(
                "<int:account_id>/hub/<str:section>/",
                section,
                name="metering_account_hub_section",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        # A search that finds exactly one account goes straight to it (the support agent's
        # first question is "show me this customer").
        cl = (
            getattr(response, "context_data", {}).get("cl") if response.status_code == 200 else None
        )
        if cl is not None and cl.query and cl.result_count == 1:
            account = cl.result_list[0]
            return HttpResponseRedirect(reverse("admin:metering_account_change", args=[account.pk]))
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        account = self.get_object(request, object_id)
        if account is not None:
            hold = active_hold(account.pk)
            extra_context.update(
                hold_panel_context(request, hold, next_url=request.get_full_path())
            )
        if account is not None and self.has_view_permission(request, account):
            hub = account_hub(account=account, user=request.user)
            extra_context["hub"] = hub
            charts_query = f"?{urlencode({'breakdown': hub.breakdown})}" if hub.breakdown else ""
            # The platform's own preview, where it has one (not the simulated provider): a tab
            # of its own, so the first paint never waits for the platform.
            previews = platform_has_preview()
            extra_context["sections"] = [
                (
                    key,
                    title,
                    reverse("admin:metering_account_hub_section", args=[account.pk, key])
                    + (charts_query if key == "charts" else ""),
                )
                for key, title in (
                    ("charts", "Usage per day and breakdowns"),
                    ("invoice", "Projected invoice, line by line"),
                    ("events", "Recent events"),
                    ("preview", "Platform preview"),
                )
                if (key != "invoice" or may_view_projection(request.user))
                and (key != "preview" or previews)
            ]
        return super().change_view(request, object_id, form_url, extra_context)

    def section_view(self, request, account_id: int, section: str):
        """One tab's content as an HTML fragment (fetched by the account page)."""
        if section not in SECTIONS:
            raise Http404("No such section.")
        if not self.has_view_permission(request):
            raise PermissionDenied
        if section == "preview":
            account = get_object_or_404(Account, pk=account_id)
            if not self.has_view_permission(request, account):
                raise PermissionDenied
            context = platform_preview_section(
                account=account, fresh=request.GET.get("fresh") == "1"
            )
            return TemplateResponse(request, SECTIONS[section], context)
        if section == "invoice":
            if not may_view_projection(request.user):
                raise PermissionDenied
            account = get_object_or_404(Account, pk=account_id)
            context = projection_panel_context(account=account)
            return TemplateResponse(request, SECTIONS[section], context)
        response = account_usage_view(request, account_id=account_id, model_admin=self)
        response.template_name = SECTIONS[section]
        # Every value with its unit: the recent events' meters.
        data = response.context_data["data"]
        units = {panel.meter.code: panel.meter.unit for panel in [*data.panels, *data.other_meters]}
        for row in response.context_data["recent"]:
            row["unit"] = units.get(row["event"].meter_code, "")
        response.context_data["usage_url"] = reverse(
            "admin:metering_account_usage", args=[account_id]
        )
        return response


if admin.site.is_registered(Account):
    admin.site.unregister(Account)
admin.site.register(Account, AccountHubAdmin)
