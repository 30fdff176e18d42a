"""Planner statistics after a bulk load.

Autovacuum analyses a table only after it notices the change (a minute or more later, and not
at all while the load's transaction is open), so right after `demo` or `ingest_file` the
planner still believes the old row count: the admin's events list, which shows the planner's
estimate rather than counting, said 15,092 events where 134,235 had just been loaded. The bulk
loaders run ANALYZE on the tables they filled when they finish.
"""

from __future__ import annotations

from django.db import connection

from metering.models import QuarantinedEvent, RollupInbox, UsageEvent

EVENT_TABLES = (UsageEvent, QuarantinedEvent, RollupInbox)


def event_tables_analyze() -> None:
    """ANALYZE the tables ingestion fills (a sample of 30,000 rows each: seconds at most)."""
    with connection.cursor() as cursor:
        for model in EVENT_TABLES:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
