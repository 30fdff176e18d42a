from __future__ import annotations

from django.db import models


class TaskRun(models.Model):
    """When each Celery task last succeeded and last failed (one row per task name).

    Written by Celery's task_success / task_failure signals (backoffice.apps); read by the status
    endpoint to tell whether each scheduled task still runs. Operational data, not a business
    record: no history.
    """

    task = models.CharField(max_length=255, unique=True, help_text="The Celery task name.")
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    runs = models.PositiveBigIntegerField(default=0, help_text="Successful runs recorded.")
    failures = models.PositiveBigIntegerField(default=0, help_text="Failed runs recorded.")

    class Meta:
        verbose_name = "task run"

    def __str__(self) -> str:
        return self.task
