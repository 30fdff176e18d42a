"""The raw SQL of the ingestion hot path.

Why below the ORM: a batch of 1,000 events must be written with one statement that inserts what
is new and silently skips what already exists, and must say which rows it inserted. That is
PostgreSQL's `INSERT ... ON CONFLICT DO NOTHING RETURNING`, which `bulk_create` cannot express
(with `ignore_conflicts` it returns no ids). The unique constraint `usage_event_identity`
decides, so N concurrent requests with one key store exactly one row. A batch believed new is
inserted without ON CONFLICT (INSERT_NEW_EVENTS, cheaper), which the constraint fails as a whole
if one key exists; the caller then runs it again with DO NOTHING.

Rows travel as ONE JSON document per statement: building it is a single orjson call in C, while
psycopg adapts Python lists to SQL arrays (`unnest`) element by element in Python, which
measured about twice as slow end to end. Each row is a JSON array (a tuple in Python), read as
`jsonb` and unpacked with `jsonb_array_elements` and positional `->`: the document is parsed
once, the properties come out as `jsonb` without being parsed a second time, and no field names
are matched. `json_to_recordset` over objects parses each row's properties again from text and
builds a hash table of field names per row; for a 1,000-event insert that cost about 1 PostgreSQL
µs an event more (bench/ingest.py), and the objects cost Python time to build and serialise.
Numbers are written as raw JSON numbers and cast to `numeric` by PostgreSQL, so they stay exact.
Statements use server-side parameter binding so the document is sent as a parameter, not quoted
into the SQL.

Callers pass rows already sorted by key: concurrent batches then take the unique-index locks in
the same order and cannot deadlock each other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import psycopg
from django.db import connection, transaction
from psycopg import errors as pg_errors

EventKey = tuple[int, str, str]  # (account_id, source, transaction_id)
QuarantineKey = tuple[str, str, str]  # (external_customer_id, source, transaction_id)

# One statement writes the new events, their rollup inbox rows, and takes the key-share locks
# on their accounts and meters that a foreign-key check would take (migration 0010): the two
# statement triggers on metering_usageevent skip it (`meterops.inbox_written`, migration 0011),
# and nothing is left for a trigger to do. Only the rows actually inserted (RETURNING) get an
# inbox row and a lock; duplicates get neither. The last two columns say whether every account,
# and every meter, of those rows was found and locked (a row deleted meanwhile is not): when
# one is false, `events_insert` refuses the statement as the reference trigger would.
_INSERT_EVENTS = """
WITH ins AS (
    INSERT INTO metering_usageevent (
        account_id, meter_id, transaction_id, source, occurred_at, received_at,
        value, unique_value, properties, content_hash, is_late, kind
    )
    SELECT (r->>0)::bigint, (r->>1)::bigint, r->>2, r->>3, (r->>4)::timestamptz,
           coalesce((r->>10)::timestamptz, %(received_at)s),
           (r->>5)::numeric, r->>6, r->7, decode(r->>8, 'hex'), (r->>9)::boolean, 'normal'
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
    {on_conflict}
    RETURNING id, account_id, meter_id, source, transaction_id
), inbox AS (
    INSERT INTO metering_rollupinbox (event_id, account_id) SELECT id, account_id FROM ins
), accounts AS (
    SELECT a.id FROM metering_account a
    WHERE a.id IN (SELECT account_id FROM ins)
    ORDER BY a.id
    FOR KEY SHARE
), meters AS (
    SELECT m.id FROM metering_meter m
    WHERE m.id IN (SELECT meter_id FROM ins)
    ORDER BY m.id
    FOR KEY SHARE
)
SELECT id, account_id, source, transaction_id,
       (SELECT count(*) FROM accounts) = (SELECT count(DISTINCT account_id) FROM ins),
       (SELECT count(*) FROM meters) = (SELECT count(DISTINCT meter_id) FROM ins)
FROM ins
"""
# The usual case, a batch of new events, goes without ON CONFLICT: an insert that may conflict
# first probes the unique index for every row and then descends it again to insert (a
# speculative insertion), about 8 of the statement's 45 us of backend CPU per event here; a
# plain insert checks uniqueness in the one descent. A key that exists fails the statement
# (psycopg's UniqueViolation, after waiting for a concurrent inserter of the same key to end),
# and the caller runs the batch again with DO NOTHING (metering.services.ingest.store).
INSERT_NEW_EVENTS = _INSERT_EVENTS.format(on_conflict="")
INSERT_EVENTS = _INSERT_EVENTS.format(
    on_conflict="ON CONFLICT (account_id, source, transaction_id) DO NOTHING"
)

# Around INSERT_EVENTS only: transaction-local, and a rolled-back savepoint undoes it too.
SKIP_INSERT_TRIGGERS = "SELECT set_config('meterops.inbox_written', 'on', true)"
KEEP_INSERT_TRIGGERS = "SELECT set_config('meterops.inbox_written', 'off', true)"

EXISTING_EVENTS = """
SELECT e.id, e.account_id, e.source, e.transaction_id, e.content_hash
FROM jsonb_array_elements(%(keys)s::jsonb) AS k
JOIN metering_usageevent e
  ON e.account_id = (k->>0)::bigint AND e.source = k->>1 AND e.transaction_id = k->>2
"""

INSERT_QUARANTINED = """
INSERT INTO metering_quarantinedevent (
    external_customer_id, meter_code, transaction_id, source, occurred_at, received_at,
    properties, content_hash, payload, reason, status, replay_result
)
SELECT r.c, r.m, r.t, r.s, r.o, %(received_at)s,
       r.p, decode(r.h, 'hex'), r.j, r.r, 'pending', ''
FROM json_to_recordset(%(rows)s::json) AS r(
    c text, m text, t text, s text, o timestamptz, p jsonb, h text, j jsonb, r text
)
ON CONFLICT (external_customer_id, source, transaction_id) DO NOTHING
RETURNING id, external_customer_id, source, transaction_id
"""

EXISTING_QUARANTINED = """
SELECT q.id, q.external_customer_id, q.source, q.transaction_id, q.content_hash
FROM json_to_recordset(%(keys)s::json) AS k(c text, s text, t text)
JOIN metering_quarantinedevent q
  ON q.external_customer_id = k.c AND q.source = k.s AND q.transaction_id = k.t
"""

# Replay reads the payload as text so that its numbers are parsed exactly (Django's JSONField
# would turn them into floats).
QUARANTINE_CLAIM = """
SELECT q.id, q.payload::text, q.received_at, q.status
FROM metering_quarantinedevent q
WHERE q.id > %(after)s AND q.status = ANY(%(statuses)s) AND {filter}
ORDER BY q.id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""


def _cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's connection (so inside its transaction)."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


# The ids as one JSON text: psycopg adapts a list item by item in Python, which cost more than
# the query for a batch's few hundred accounts; orjson writes them at once. A semi-join, not
# `= ANY(array)`: with few accounts PostgreSQL scans the table and tests each row against the
# array one element at a time (texteq under ExecEvalScalarArrayOp in a perf profile of
# bench/ingest.py's backends, about 3 us an event with 300 ids and 500 accounts), where the join
# hashes the ids; with many accounts it probes the unique index once per id either way.
ACCOUNTS_BY_EXTERNAL_ID = (
    "SELECT external_id, id FROM metering_account"
    " WHERE external_id IN (SELECT jsonb_array_elements_text(%s::jsonb))"
)


def accounts_by_external_id(*, external_ids: list[str]) -> dict[str, int]:
    """{external_id: id} for the accounts that exist (one query, the ids as one JSON text)."""
    if not external_ids:
        return {}
    with _cursor() as cur:
        cur.execute(ACCOUNTS_BY_EXTERNAL_ID, [orjson.dumps(external_ids).decode()])
        return dict(cur.fetchall())


def meters_by_code(*, codes: list[str]) -> dict[str, tuple[int, str, str, bool]]:
    """{code: (id, aggregation, value_property, active)} for the meters that exist."""
    if not codes:
        return {}
    with _cursor() as cur:
        cur.execute(
            "SELECT code, id, aggregation, value_property, active FROM metering_meter"
            " WHERE code = ANY(%s)",
            [codes],
        )
        return {code: rest for code, *rest in cur.fetchall()}


# The fields of an insert row, in order (see INSERT_EVENTS).
EVENT_ROW_FIELDS = (
    "account_id", "meter_id", "transaction_id", "source", "occurred_at", "value",
    "unique_value", "properties", "content_hash_hex", "is_late", "received_at",
)  # fmt: skip


def events_insert(
    *, rows: list[tuple], received_at: datetime, new_only: bool = False
) -> dict[EventKey, int]:
    """Insert rows (tuples in EVENT_ROW_FIELDS order); return {key: id} of those inserted.

    Keys that exist already are skipped; with new_only=True they fail the statement instead
    (psycopg's UniqueViolation: the caller's transaction or savepoint must roll back), which
    costs less when none exists (see INSERT_NEW_EVENTS).

    Each inserted event gets its rollup inbox row in the same statement, and its account and
    meter are locked FOR KEY SHARE; a row whose account or meter does not exist makes the whole
    statement fail (psycopg's ForeignKeyViolation, as the reference trigger raises for other
    writers), and the caller's transaction or savepoint must roll back.

    `received_at` may be None in a row: the statement's `received_at` is used then.

    `value` and `properties` must be orjson.Fragment (raw JSON) so numbers are not re-encoded.
    """
    if not rows:
        return {}
    # The setting is transaction-local: in autocommit it would be gone before the insert (and
    # the triggers would queue a second inbox row). Inside the caller's atomic block this opens
    # nothing.
    with transaction.atomic(savepoint=False), _cursor() as cur:
        cur.execute(SKIP_INSERT_TRIGGERS)
        cur.execute(
            INSERT_NEW_EVENTS if new_only else INSERT_EVENTS,
            {"rows": orjson.dumps(rows).decode(), "received_at": received_at},
        )
        inserted = cur.fetchall()
        cur.execute(KEEP_INSERT_TRIGGERS)
        if inserted:  # raised inside the block, so that it rolls the rows back
            _id, _a, _s, _t, accounts_found, meters_found = inserted[0]
            if not accounts_found:
                raise pg_errors.ForeignKeyViolation(
                    "a usage event refers to an account that does not exist"
                )
            if not meters_found:
                raise pg_errors.ForeignKeyViolation(
                    "a usage event refers to a meter that does not exist"
                )
    return {(a, s, t): event_id for event_id, a, s, t, _accounts, _meters in inserted}


def events_existing(*, keys: list[EventKey]) -> dict[EventKey, tuple[int, bytes]]:
    """{key: (id, content_hash)} of stored events among `keys`."""
    if not keys:
        return {}
    doc = orjson.dumps(keys).decode()  # tuples are JSON arrays
    with _cursor() as cur:
        cur.execute(EXISTING_EVENTS, {"keys": doc})
        return {(a, s, t): (event_id, bytes(h)) for event_id, a, s, t, h in cur.fetchall()}


def quarantined_insert(
    *, rows: list[dict[str, Any]], received_at: datetime
) -> dict[QuarantineKey, int]:
    """Insert rows (keys c, m, t, s, o, p, h, j, r); return {key: id} of those inserted."""
    if not rows:
        return {}
    with _cursor() as cur:
        cur.execute(
            INSERT_QUARANTINED, {"rows": orjson.dumps(rows).decode(), "received_at": received_at}
        )
        return {(c, s, t): qid for qid, c, s, t in cur.fetchall()}


def quarantined_existing(*, keys: list[QuarantineKey]) -> dict[QuarantineKey, tuple[int, bytes]]:
    if not keys:
        return {}
    doc = orjson.dumps([{"c": c, "s": s, "t": t} for c, s, t in keys]).decode()
    with _cursor() as cur:
        cur.execute(EXISTING_QUARANTINED, {"keys": doc})
        return {(c, s, t): (qid, bytes(h)) for qid, c, s, t, h in cur.fetchall()}


_BY_IDS = "q.id = ANY(%(ids)s)"
# Without ids, claim only what can now be attributed (or was marked replayable), so a large
# quarantine of still-unknown accounts is not read on every replay.
_ATTRIBUTABLE = """(q.status = 'replayable' OR (
    EXISTS (SELECT 1 FROM metering_account a WHERE a.external_id = q.external_customer_id)
    AND EXISTS (SELECT 1 FROM metering_meter m WHERE m.code = q.meter_code AND m.active)
))"""


def quarantined_claim(
    *, after: int, statuses: list[str], ids: list[int] | None, limit: int
) -> list[tuple[int, str, datetime, str]]:
    """Lock and return up to `limit` quarantined rows (id, payload text, received_at, status).

    SKIP LOCKED: two replays running at once split the work instead of waiting on each other.
    """
    sql = QUARANTINE_CLAIM.format(filter=_BY_IDS if ids is not None else _ATTRIBUTABLE)
    params: dict[str, Any] = {"after": after, "statuses": statuses, "limit": limit}
    if ids is not None:
        params["ids"] = ids
    with _cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()
