from django.apps import AppConfig


class AlertsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "alerts"

    def ready(self) -> None:
        # Billing's push, its projected-invoice page and the account API learn of billing
        # holds through metering's registry (they may not import alerts).
        from alerts.selectors import HOLD_SOURCE
        from metering.account_holds import account_hold_source_register

        account_hold_source_register(HOLD_SOURCE)
