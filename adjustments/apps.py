from django.apps import AppConfig


class AdjustmentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "adjustments"

    def ready(self) -> None:
        from adjustments.audit import audit_capture_connect

        # Every history-tracked model of every app feeds the audit log.
        audit_capture_connect()
