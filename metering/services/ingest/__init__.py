"""Usage event ingestion: every item is accepted, a duplicate, quarantined, a conflict or rejected.

The one write path for usage events (API, `ingest_file`, quarantine replays). Guarantees:

- Exactly once. Identity is (account, source, transaction_id), enforced by the unique constraint
  `usage_event_identity`: a batch is inserted as if all new, and if a key exists it runs again
  with `INSERT ... ON CONFLICT DO NOTHING` (metering.ingest_sql, store.store_parsed). A key
  that is already stored is a `duplicate` when its content hash matches (nothing written, a
  success) and a `conflict` otherwise (nothing written, an error). This holds across requests,
  within one batch (the first occurrence wins) and under concurrency (PostgreSQL makes the second
  inserter wait for the first and then skip).
- Nothing silently dropped. An event for an account or meter that does not exist (or a meter
  that is inactive) is stored in the quarantine with its reason and reported `quarantined`; it
  is replayed once the account and meter exist (metering.services.quarantine).
- Exact values. Numbers arrive as Decimal (metering.exact_json) and are written as decimal text.

Validation is plain Python, not DRF serializers: per item it costs a few microseconds, which is
what lets a 1,000-event batch keep up with COPY (see bench/ingest.py).

Time rules: `timestamp` is Unix seconds (int, decimal or numeric string) or an RFC 3339 time with
an offset; more than INGEST_MAX_FUTURE_SECONDS ahead of reception is rejected. An event is
*late* when it occurred before the start of the previous UTC day, relative to when it is written
(a daily or hourly rollup of a day before yesterday is then being changed after the fact);
late events are accepted and flagged `is_late`. A Lago event without `timestamp` takes the time
of reception, as Lago does, and its content hash leaves the timestamp out so that a retry is a
duplicate.

The package, by role: common (statuses, limits, result types, ParsedEvent), parse (the two
formats, Lago and CloudEvents, parsed and validated per item), values (values checked against
the meter, the row, the late cutoff), store (persistence, quarantine, conflicts, retries and
the batch result: `events_ingest`).
"""

from metering.services.ingest.common import (
    ACCEPTED,
    CONFLICT,
    DEADLOCK_RETRIES,
    DUPLICATE,
    MAX_DECIMAL_PLACES,
    MAX_INTEGER_DIGITS,
    MAX_TEXT_LENGTH,
    QUARANTINED,
    REJECTED,
    BatchResult,
    Format,
    ItemResult,
    ParsedEvent,
    Status,
)
from metering.services.ingest.parse import IngestLimits, parse_item, parse_timestamp
from metering.services.ingest.store import events_ingest, store_parsed
from metering.services.ingest.values import late_cutoff

__all__ = [
    "ACCEPTED",
    "CONFLICT",
    "DEADLOCK_RETRIES",
    "DUPLICATE",
    "MAX_DECIMAL_PLACES",
    "MAX_INTEGER_DIGITS",
    "MAX_TEXT_LENGTH",
    "QUARANTINED",
    "REJECTED",
    "BatchResult",
    "Format",
    "IngestLimits",
    "ItemResult",
    "ParsedEvent",
    "Status",
    "events_ingest",
    "late_cutoff",
    "parse_item",
    "parse_timestamp",
    "store_parsed",
]
