"""The Celery app of the fault run (bench/faults.py): Meterops' own app, with a short broker
visibility timeout.

With the Redis broker, a message taken by a worker that is then killed with SIGKILL (acks_late:
not acknowledged yet) is given back to the queue only once its visibility timeout has passed,
one hour by default. The fault run kills workers on purpose and waits for the redelivery, so it
shortens the timeout (FAULTS_VISIBILITY_TIMEOUT seconds, 10 by default). A timeout shorter than
a task also redelivers a task that is still running: the tasks are safe to run twice, and that is
exercised too. Settings and tasks are otherwise those of production (config.celery).
"""

from __future__ import annotations

import os

from config.celery import app

app.conf.broker_transport_options = {
    "visibility_timeout": int(os.environ.get("FAULTS_VISIBILITY_TIMEOUT", "10")),
    # Look for abandoned messages every 2 s (kombu's default sweep is about every 100 s).
    "unacked_restore_interval": 2,
    "unacked_restore_throttle": 1,
}

__all__ = ["app"]
