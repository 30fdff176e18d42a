from django.apps import AppConfig
from django.db.models.signals import post_migrate


class MeteringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "metering"

    def ready(self) -> None:
        from metering.schedule import schedule_sync_after_migrate

        # The periodic schedule in code -> django-celery-beat's tables (once per migrate).
        post_migrate.connect(
            schedule_sync_after_migrate, sender=self, dispatch_uid="metering.schedule_sync"
        )
