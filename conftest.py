"""Test defaults: local development settings unless the environment says otherwise."""

import os

os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "false")
