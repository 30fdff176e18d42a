"""The back office's admin: pages that span apps, and the admins of other packages re-registered
with the project's permission rules.

- accounts: the account hub (metering's account admin plus what billing, and later alerts,
  reconciliation and adjustments, show about an account);
- third_party: django-celery-beat's schedules and auth's users and groups, on the one audited
  base (metering.admin.common.AuditedModelAdmin).

Importing this package registers them (admin autodiscovery imports it after every lower app's
admin, since backoffice comes last in INSTALLED_APPS).
"""

from backoffice.admin.accounts import AccountHubAdmin
from backoffice.admin.third_party import (
    GroupAdmin,
    PeriodicTaskAdmin,
    UserAdmin,
)

__all__ = ["AccountHubAdmin", "GroupAdmin", "PeriodicTaskAdmin", "UserAdmin"]
