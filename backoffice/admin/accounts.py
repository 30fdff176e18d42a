"""The account hub: metering's account admin, plus what the other apps know about the account.

Metering owns accounts and their usage page; it names no other app. This admin replaces it in
the admin site and renders templates that extend metering's: the usage page gets billing's
projected invoice (templates/admin/backoffice/account/usage.html), the account page a link to
it. Reconciliation, alerts and adjustments add their panels here.
"""

from __future__ import annotations

from django.contrib import admin

from metering.admin import AccountAdmin
from metering.models import Account


class AccountHubAdmin(AccountAdmin):
    usage_template = "admin/backoffice/account/usage.html"
    change_form_template = "admin/backoffice/account/change_form.html"


if admin.site.is_registered(Account):
    admin.site.unregister(Account)
admin.site.register(Account, AccountHubAdmin)
