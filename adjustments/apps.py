from django.apps import AppConfig


class AdjustmentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "adjustments"
