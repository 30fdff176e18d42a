"""The account hub: metering's account admin, plus what the other apps know about the account.

Metering owns accounts and their usage page; it names no other app. This admin replaces it in
the admin site and renders templates that extend metering's: the usage page gets billing's
projected invoice (templates/admin/backoffice/account/usage.html), the account page a link to
it and the account's active billing hold (alerts.admin_holds: the window warning and, for a
Manager, the release form). Reconciliation, alerts and adjustments add their panels here.
"""

from __future__ import annotations

from django.contrib import admin

from alerts.admin_holds import hold_panel_context
from alerts.selectors import active_hold
from metering.admin import AccountAdmin
from metering.models import Account


class AccountHubAdmin(AccountAdmin):
    usage_template = "admin/backoffice/account/usage.html"
    change_form_template = "admin/backoffice/account/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        if object_id and str(object_id).isdigit():
            hold = active_hold(int(object_id))
            extra.update(hold_panel_context(request, hold, next_url=request.get_full_path()))
        return super().change_view(request, object_id, form_url, extra_context=extra)


if admin.site.is_registered(Account):
    admin.site.unregister(Account)
admin.site.register(Account, AccountHubAdmin)
