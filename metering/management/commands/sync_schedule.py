from django.core.management.base import BaseCommand

from metering.schedule import schedule_sync


class Command(BaseCommand):
    help = "Write the periodic schedule from settings.CELERY_BEAT_SCHEDULE into django-celery-beat."

    def handle(self, *args, **options):
        result = schedule_sync()
        self.stdout.write(f"Synced: {', '.join(result['synced']) or 'nothing'}")
        if result["disabled"]:
            self.stdout.write(f"Disabled (no longer in code): {', '.join(result['disabled'])}")
