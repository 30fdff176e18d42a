"""The Celery app. Tasks live in each app's tasks.py and are discovered."""

import os

from celery import Celery
from django.db import OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("meterops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The options every Meterops task takes: acknowledged after it ran (a worker that dies mid-task
# leaves it to be redelivered, so tasks must be safe to run twice), and retried with backoff only
# on transient database trouble (OperationalError: a dropped connection, a deadlock, a
# serialization failure); anything else is a bug and fails loudly.
TRANSIENT_TASK = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "max_retries": 5,
}
