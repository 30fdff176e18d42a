"""GET /status: the readiness / monitoring view (backoffice.status has the checks).

No API key: it shows operational figures only (row counts, ages, task names and times), never
customer data, and a monitoring probe should not hold a `read` key, which can read every
account's usage. HTTP 200 for ok and warning, 503 for critical, so a probe can page on the code.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from backoffice.status import CRITICAL, status_get

logger = logging.getLogger(__name__)


@never_cache
@require_GET
def status_view(request):
    try:
        status = status_get()
    except DatabaseError as exc:
        logger.warning("Status check could not read the database: %s", exc)
        return JsonResponse(
            {
                "status": CRITICAL,
                "checked_at": timezone.now().isoformat().replace("+00:00", "Z"),
                "checks": {"database": {"status": CRITICAL, "error": exc.__class__.__name__}},
            },
            status=503,
        )
    return JsonResponse(status.as_dict(), status=503 if status.status == CRITICAL else 200)
