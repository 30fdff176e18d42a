"""Logging filters named in settings.LOGGING."""

from __future__ import annotations

import logging


class RefusedRequestWithoutTraceback(logging.Filter):
    """A refused request (a 4xx from PermissionDenied, SuspiciousOperation, DisallowedHost,
    BadRequest) is one line: the request's fault, not the server's, so no traceback.

    Django logs these with the exception attached (django.request for 400/403,
    django.security.* for suspicious operations); a traceback per refused request buries real
    errors. 5xx records keep theirs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        refused = record.name.startswith("django.security.") or (
            record.name == "django.request" and status is not None and 400 <= status < 500
        )
        if refused and record.exc_info:
            record.exc_info = None
            record.exc_text = None
        return True
