"""The periodic schedule: defined in code (settings.CELERY_BEAT_SCHEDULE), mirrored into
django-celery-beat's tables so that staff see it in the admin and the database scheduler runs it.

`schedule_sync` is idempotent. It writes each entry through django-celery-beat's own
`ModelEntry.from_entry` (the very call the scheduler makes when beat starts), so the rows are
the ones beat would write; entries it wrote before that are no longer in code are disabled, not
deleted, so their history stays visible. It runs after every `migrate` (post_migrate) and on
demand with `manage.py sync_schedule`.
"""

from __future__ import annotations

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

SYNCED_DESCRIPTION = "Defined in code (settings.CELERY_BEAT_SCHEDULE); edits here are overwritten."


def schedule_sync() -> dict[str, list[str]]:
    """Write the code schedule into django-celery-beat. Returns the names synced and disabled."""
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import ModelEntry

    from config.celery import app

    schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", {})
    with transaction.atomic():
        for name, entry in schedule.items():
            fields = {**entry, "description": SYNCED_DESCRIPTION, "enabled": True}
            ModelEntry.from_entry(name, app=app, **fields)
        stale = list(
            PeriodicTask.objects.filter(description=SYNCED_DESCRIPTION, enabled=True)
            .exclude(name__in=list(schedule))
            .values_list("name", flat=True)
        )
        for task in PeriodicTask.objects.filter(name__in=stale):
            # save() (not update()) so the scheduler notices the change.
            task.enabled = False
            task.save(update_fields=["enabled"])
    return {"synced": sorted(schedule), "disabled": sorted(stale)}


def schedule_sync_after_migrate(*, using: str = DEFAULT_DB_ALIAS, **_kwargs) -> None:
    """post_migrate receiver: sync once django-celery-beat's tables exist."""
    if using != DEFAULT_DB_ALIAS:
        return
    tables = connections[using].introspection.table_names()
    if "django_celery_beat_periodictask" not in tables:
        return
    schedule_sync()
