import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class BackofficeConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "backoffice"
    verbose_name = "Back office"

    def ready(self):
        from celery.signals import task_failure, task_success

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
