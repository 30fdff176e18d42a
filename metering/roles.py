"""The staff roles: Support, Manager, Auditor.

The groups are created by a data migration (metering 0003); their permissions are synced after
every migrate (post_migrate, see MeteringConfig.ready) so models added by later features get
the right permissions without another hand-written migration.

- Auditor: views everything, history included; changes nothing.
- Support: views everything; the few changes a support agent makes (listed below).
- Manager: what Support can, plus the queues and approvals (listed below).
"""

from __future__ import annotations

ROLE_NAMES = ("Support", "Manager", "Auditor")

# Apps whose every model all three roles may view.
VIEWABLE_APPS = (
    "notifications",
    "metering",
    "billing",
    "reconciliation",
    "adjustments",
    "django_celery_beat",
)

# "app_label.codename" the role gets on top of viewing. Features add their lines here.
EXTRA_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "Auditor": (),
    "Support": ("metering.replay_quarantinedevent",),
    "Manager": (
        "metering.replay_quarantinedevent",
        "metering.add_account",
        "metering.change_account",
        "metering.add_meter",
        "metering.change_meter",
        # Billing: subscriptions and periods, and re-sending failed pushes to the provider.
        "billing.add_subscription",
        "billing.change_subscription",
        "billing.change_billingperiod",
        "billing.change_pushledgerentry",
        # Customer webhooks: fix or re-enable an endpoint, send a delivery again.
        "notifications.change_webhookendpoint",
        "notifications.resend_webhookdelivery",
    ),
}


def roles_sync(**_kwargs) -> None:
    """Create the groups if missing and set each group's permissions to exactly its rule."""
    from django.contrib.auth.models import Group, Permission

    view_perms = list(
        Permission.objects.filter(
            content_type__app_label__in=VIEWABLE_APPS, codename__startswith="view_"
        )
    )
    for role in ROLE_NAMES:
        group, _ = Group.objects.get_or_create(name=role)
        extra = []
        for dotted in EXTRA_PERMISSIONS[role]:
            app_label, codename = dotted.split(".", 1)
            extra.extend(
                Permission.objects.filter(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(view_perms + extra)
