from django.apps import AppConfig
from django.db.models.signals import post_migrate


def default_rules_ensure(**_kwargs) -> None:
    """The default spike, drop and quota rules on a database that has no rule at all (a
    flushed one: the migration that seeds them ran long ago). A database with rules keeps
    them as its people left them: a deleted default rule is not brought back."""
    from alerts.models import AlertRule

    if AlertRule.objects.exists():
        return
    for code, name, kind in DEFAULT_RULES:
        AlertRule.objects.create(code=code, name=name, kind=kind, scope="global", enabled=True)


DEFAULT_RULES = [
    ("default-spike", "Usage spike (3x the weekday normal)", "spike"),
    ("default-drop", "Usage drop (no usage for 48 h)", "drop"),
    ("default-quota", "Quota (80% and 100% of included units or the limit)", "quota"),
]


class AlertsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alerts"

    def ready(self) -> None:
        # Billing's push, its projected-invoice page and the account API learn of billing
        # holds through metering's registry (they may not import alerts).
        from alerts.selectors import HOLD_SOURCE
        from metering.account_holds import account_hold_source_register

        account_hold_source_register(HOLD_SOURCE)
        post_migrate.connect(default_rules_ensure, sender=self, dispatch_uid="alerts.default_rules")
