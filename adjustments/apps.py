from django.apps import AppConfig


class AdjustmentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "adjustments"

    def ready(self) -> None:
        # Billing's projection learns the credits on a period through a registry (billing
        # never imports adjustments).
        from adjustments.services import adjustments_credits_for_period
        from billing.projection import period_credit_source_register

        period_credit_source_register(adjustments_credits_for_period)

        # "Push and open a credit": a released billing hold's credit (alerts sends the signal).
        from adjustments.services import hold_release_credit_open
        from alerts.signals import billing_hold_released

        billing_hold_released.connect(
            hold_release_credit_open, dispatch_uid="adjustments.hold_release_credit"
        )

        from adjustments.audit import audit_capture_connect

        # Every history-tracked model of every app feeds the audit log.
        audit_capture_connect()
