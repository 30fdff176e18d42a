"""The staff roles: Support, Manager, Auditor.

They live here, above the apps, because they name every app's permissions. The groups were
first created by a data migration (metering 0003, kept as history); their permissions are
synced after every migrate (post_migrate, see BackofficeConfig.ready), which also creates a
missing group, so models added by later features get the right permissions without another
hand-written migration.

- Auditor: views everything, history included, and who holds which role (users and groups,
  for access reviews); changes nothing.
- Support: views everything but the whole audit log (an account's audit timeline only); the
  few changes a support agent makes (listed below).
- Manager: what Support can, plus the queues and approvals (listed below).
"""

from __future__ import annotations

ROLE_NAMES = ("Support", "Manager", "Auditor")

# Apps whose every model all three roles may view.
VIEWABLE_APPS = (
    "notifications",
    "metering",
    "billing",
    "alerts",
    "reconciliation",
    "adjustments",
    "django_celery_beat",
    "backoffice",
)

# "app_label.codename" the role gets on top of viewing. Features add their lines here.
EXTRA_PERMISSIONS: dict[str, tuple[str, ...]] = {
    # Access reviews: who is staff, who holds which role (users and groups stay superuser-only
    # to change, see backoffice.admin).
    "Auditor": (
        "auth.view_user",
        "auth.view_group",
        # The audit log: a streamed CSV / JSON Lines export of a date range (reads only).
        "adjustments.export_auditentry",
    ),
    "Support": (
        "metering.replay_quarantinedevent",
        # Alerts: work the alert queue (acknowledge, snooze, label, resolve with a reason).
        "alerts.acknowledge_alert",
        "alerts.snooze_alert",
        "alerts.label_alert",
        "alerts.resolve_alert",
        # Adjustments: request credits and usage corrections, apply those within the policy.
        "adjustments.request_adjustment",
        "adjustments.apply_adjustment",
    ),
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
        # Alerts: the queue as Support, plus the rules and releasing billing holds.
        "alerts.acknowledge_alert",
        "alerts.snooze_alert",
        "alerts.label_alert",
        "alerts.resolve_alert",
        "alerts.add_alertrule",
        "alerts.change_alertrule",
        "alerts.release_billinghold",
        # Reconciliation: work the mismatch queue and set its thresholds.
        "reconciliation.acknowledge_mismatch",
        "reconciliation.resolve_mismatch",
        "reconciliation.repush_mismatch",
        "reconciliation.add_reconciliationthreshold",
        "reconciliation.change_reconciliationthreshold",
        # Customer webhooks: fix or re-enable an endpoint, send a delivery again.
        "notifications.change_webhookendpoint",
        "notifications.resend_webhookdelivery",
        # Adjustments: as Support, plus approving or rejecting other people's requests and
        # setting the four-eyes policy.
        "adjustments.request_adjustment",
        "adjustments.apply_adjustment",
        "adjustments.approve_adjustment",
        "adjustments.add_adjustmentpolicy",
        "adjustments.change_adjustmentpolicy",
        # The audit log: export a date range.
        "adjustments.export_auditentry",
    ),
}

# View permissions a role does NOT get from VIEWABLE_APPS. Support sees an account's audit
# timeline (adjustments.view_timeline_auditentry), not the whole audit log.
WITHHELD_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "Support": ("adjustments.view_auditentry",),
}


def roles_sync(**_kwargs) -> None:
    """Create the groups if missing and set each group's permissions to exactly its rule."""
    from django.contrib.auth.models import Group, Permission

    view_perms = list(
        Permission.objects.filter(
            content_type__app_label__in=VIEWABLE_APPS, codename__startswith="view_"
        ).select_related("content_type")
    )
    for role in ROLE_NAMES:
        group, _ = Group.objects.get_or_create(name=role)
        extra = []
        for dotted in EXTRA_PERMISSIONS[role]:
            app_label, codename = dotted.split(".", 1)
            extra.extend(
                Permission.objects.filter(content_type__app_label=app_label, codename=codename)
            )
        withheld = {tuple(d.split(".", 1)) for d in WITHHELD_PERMISSIONS.get(role, ())}
        viewable = [p for p in view_perms if (p.content_type.app_label, p.codename) not in withheld]
        group.permissions.set(viewable + extra)
