"""The metering back office: accounts, meters, API keys, usage events and the quarantine.

Every admin in the project is built on the bases in `common` (AuditedModelAdmin,
ReadOnlyModelAdmin, AuditedHistoryAdmin): each action declares the permission it needs, a
POSTed action the user may not run is a 403 (Django's default quietly re-renders the list),
a history revert needs the change permission, and every change to an audited record asks why;
the reason lands in the django-simple-history record next to the acting user.

One module per admin group; importing this package imports them all, which registers the
admins: common (the bases, also used by billing's and backoffice's admins), accounts (accounts
and meters), events (usage events), quarantine, api_keys, rollup_checks, webhooks (the
notifications app's endpoints, deliveries and attempts: that app sits below these bases). The account usage page
is metering.admin_dashboard; the account hub above the apps extends it.
"""

from metering.admin.accounts import AccountAdmin, MeterAdmin
from metering.admin.api_keys import ApiKeyAdmin, ApiKeyCreateForm, ApiKeyFilter
from metering.admin.common import (
    AuditedHistoryAdmin,
    AuditedModelAdmin,
    ReadOnlyModelAdmin,
    change_reason_form,
    pretty_json,
)
from metering.admin.events import (
    AccountExternalIdFilter,
    EstimatedCountPaginator,
    OccurredRecentlyFilter,
    SortableByOnlyChangeList,
    UsageEventAdmin,
)
from metering.admin.quarantine import QuarantinedEventAdmin
from metering.admin.rollup_checks import RollupCheckAdmin
from metering.admin.webhooks import (
    WebhookAttemptAdmin,
    WebhookDeliveryAdmin,
    WebhookEndpointAdmin,
)

__all__ = [
    "AccountAdmin",
    "AccountExternalIdFilter",
    "ApiKeyAdmin",
    "ApiKeyCreateForm",
    "ApiKeyFilter",
    "AuditedHistoryAdmin",
    "AuditedModelAdmin",
    "EstimatedCountPaginator",
    "MeterAdmin",
    "OccurredRecentlyFilter",
    "QuarantinedEventAdmin",
    "ReadOnlyModelAdmin",
    "RollupCheckAdmin",
    "SortableByOnlyChangeList",
    "UsageEventAdmin",
    "WebhookAttemptAdmin",
    "WebhookDeliveryAdmin",
    "WebhookEndpointAdmin",
    "change_reason_form",
    "pretty_json",
]
