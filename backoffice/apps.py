from django.apps import AppConfig
from django.db.models.signals import post_migrate


class BackofficeConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backoffice"
    verbose_name = "Back office"

    def ready(self) -> None:
        from backoffice.roles import roles_sync

        # The roles name every app's permissions, so they are synced from the top app, after
        # every app's migrate; dispatch_uid keeps it to one call per signal.
        post_migrate.connect(roles_sync, dispatch_uid="backoffice.roles_sync")
