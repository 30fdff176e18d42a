from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    """Outbound e-mail, the team webhook and signed customer webhooks. The lowest app: it knows
    nothing of accounts or alerts; an endpoint belongs to an opaque `owner_key`."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "notifications"
