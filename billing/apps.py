from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self) -> None:
        # Metering's usage page learns billing periods through a registry (no upward import).
        from billing.usage_periods import account_usage_periods
        from metering.dashboard_selectors import usage_period_source_register

        usage_period_source_register(account_usage_periods)
