import logging

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


class BackofficeConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backoffice"
    verbose_name = "Back office"

    def ready(self) -> None:
        from celery.signals import task_failure, task_success

        from backoffice.roles import roles_sync

        # The roles name every app's permissions, so they are synced from the top app, after
        # every app's migrate; dispatch_uid keeps it to one call per signal.
        post_migrate.connect(roles_sync, dispatch_uid="backoffice.roles_sync")
        # weak=False: the receivers are module-level functions, but say it plainly.
        task_success.connect(_task_succeeded, weak=False, dispatch_uid="backoffice.task_success")
        task_failure.connect(_task_failed, weak=False, dispatch_uid="backoffice.task_failure")


def _task_succeeded(sender=None, **_kwargs):
    _record(sender, succeeded=True)


def _task_failed(sender=None, **_kwargs):
    _record(sender, succeeded=False)


def _record(task, *, succeeded: bool) -> None:
    """Recording a run must never fail the task it records: log and go on."""
    from django.utils import timezone

    from backoffice.services import task_run_record

    name = getattr(task, "name", None)
    if not name:
        return
    try:
        task_run_record(task=name, succeeded=succeeded, at=timezone.now())
    except Exception:
        logger.exception("Could not record a run of task %s", name)
