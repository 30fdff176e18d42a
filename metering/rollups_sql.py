"""The SQL behind the rollups, in one place.

Why raw SQL: a rollup run moves tens of thousands of events per transaction through a claim
(DELETE ... RETURNING on the inbox), a dimension mapping, two aggregations and upserts with
additive/GREATEST/tie-broken merge rules. Expressed through the ORM this would be a row-by-row
loop or a pile of `RawSQL`; as set-based statements over per-transaction temporary tables it is
a handful of round trips per batch, and each statement can be read (and EXPLAINed) on its own.

Everything here works on one shape of input, the temporary table `rollup_events`:

    id, account_id, meter_id, occurred_at, value, unique_value, properties,
    kind, corrects_id, hour, day, contributes, for_hour, for_day

filled either by claiming a batch from the inbox (the drain, merged additively) or by loading
the raw events of some buckets (recompute, rebuild, self-check, the raw-aggregate selector,
which overwrite or compare). The same mapping and aggregation statements then serve all of
them, so "what a rollup row should hold" is defined once:

- hour = the UTC hour (date_bin, independent of the session time zone);
- day = the wall-clock date in the account's zone (`AT TIME ZONE`), see metering.periods;
- an event contributes when it is *effective*: no correction that references it has been
  rolled up (i.e. is no longer in the inbox). Counting only rolled-up corrections is what lets
  a correction and its original be drained in any order without counting anything twice.

Temporary tables are created per transaction (ON COMMIT DROP): a crash or a rollback leaves
nothing behind, and concurrent sessions never see each other's.
"""

from __future__ import annotations

# Drains, rebuilds and self-checks hold this transaction-level advisory lock, so one of them at
# a time changes rollups. Correctness of the additive path does not depend on it (SKIP LOCKED
# and the same-transaction DELETE already make double application impossible), but bucket
# recomputes overwrite rows and the dimension cap counts kept values, and both need to know
# that no other transaction is adding to the same rows meanwhile.
ROLLUP_LOCK_KEY = 0x6D6574_726F6C6C  # "met" "roll"

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"
WAIT_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"

# Drains can run side by side on disjoint sets of accounts. Accounts fall into ACCOUNT_SLOTS
# slots (account id modulo ACCOUNT_SLOTS); a drain holds the rollup lock SHARED plus its
# slots' locks EXCLUSIVE, and claims only events of accounts in those slots. Everything a drain
# reads and writes is per account (rollup rows, distinct values, the dimension registry,
# corrections: a correction belongs to its original's account), so two drains holding
# different slots never touch the same row, and two that want the same slot take turns.
# Rebuilds and the self-check hold the rollup lock EXCLUSIVE, so they wait for every drain.
# The slot count is fixed (not a setting): workers configured differently during a rolling
# deploy still exclude each other slot by slot. Locks are taken in ascending key order, so
# lockers cannot deadlock on each other.
ACCOUNT_SLOTS = 16
TRY_LOCK_SHARED = "SELECT pg_try_advisory_xact_lock_shared(%(key)s)"
WAIT_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%(key)s)"


def slot_lock_key(slot: int) -> int:
    return ROLLUP_LOCK_KEY + 1 + slot


# Large enough that a 50k-event batch hashes in memory; local to the transaction.
TUNE = "SET LOCAL work_mem = '64MB'"

# Drain transactions only: commit without waiting for the WAL flush. Safe because a drain
# batch's only durable effects are the inbox delete and the rollup upsert, in the same
# transaction: if the server crashes before the WAL reaches disk, the last few batches are lost
# *together* (the events are back in the inbox, their rollup rows never written) and the next
# drain folds them in again. No event is lost or counted twice; a drain is merely redone. And
# nothing durable can depend on a lost batch: WAL is flushed in order, so any later synchronous
# commit (a push ledger row written from these rollups, say) flushes this batch's commit too.
# Ingestion keeps synchronous commits: an accepted event must survive a crash.
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

EVENTS_COLUMNS = """
    id bigint NOT NULL,
    account_id bigint NOT NULL,
    meter_id bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    value numeric,
    unique_value text NOT NULL,
    properties jsonb NOT NULL,
    kind text NOT NULL,
    corrects_id bigint,
    hour timestamptz NOT NULL,
    day date NOT NULL,
    contributes boolean NOT NULL,
    for_hour boolean NOT NULL,
    for_day boolean NOT NULL
"""

CREATE_EVENTS = f"CREATE TEMP TABLE rollup_events ({EVENTS_COLUMNS}) ON COMMIT DROP"

# The bucket expressions; `e` is a usage event, `a` its account.
HOUR_OF = "date_bin('1 hour', e.occurred_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
DAY_OF = "(e.occurred_at AT TIME ZONE a.timezone)::date"

# Claim a batch: delete it from the inbox, keeping the ids, in one statement. The rows deleted
# here come back if this transaction rolls back, so a crash loses nothing. `after` is only a
# scan hint for the next batch of the same run (rows below it are picked up by a later pass),
# never a watermark that decides what counts.
#
# Batches go in (account, event id) order, not in arrival order. A backlog of millions is then
# drained a few accounts at a time: every rollup row of those accounts (hourly, daily, per
# dimension value) is written by one batch and lands next to its neighbours, in the index and
# in the heap, instead of each batch touching a row of every account across every index page.
# That is what keeps a large drain from thrashing the buffer cache, and what lets an account's
# rows be read back with a few page reads. Live traffic (a minute of events) fits one batch
# whatever the order. Order never changes a result: merges combine in any order.
#
# Exactly once rests on the DELETE itself: of two transactions deleting the same inbox row,
# the second waits for the first and, once it commits, finds the row gone and does not return
# it (READ COMMITTED re-checks the row). No row locks are taken beforehand (FOR UPDATE SKIP
# LOCKED would write every row twice): drains that could meet on a row never run at once,
# since they hold the same account slot's lock (see ACCOUNT_SLOTS), so there is nothing to skip.
#
# The picked rows are deleted by ctid (a TID scan). Inbox rows are never updated, and a row
# this statement's snapshot sees cannot be vacuumed away while the statement runs, so a ctid
# still names the row picked. Deleting by `event_id IN (subquery)` instead lets the planner
# hash the subquery and scan the whole inbox for every batch, which is quadratic over a backlog
# of millions.
CLAIM_BATCH = """
CREATE TEMP TABLE rollup_claimed ON COMMIT DROP AS
WITH picked AS MATERIALIZED (
    SELECT ctid FROM metering_rollupinbox
    WHERE (account_id, event_id) > (%(after_account)s, %(after_id)s)
      AND mod(account_id, %(slot_count)s) = ANY (%(slots)s)
    ORDER BY account_id, event_id
    LIMIT %(limit)s
), claimed AS (
    DELETE FROM metering_rollupinbox
    WHERE ctid = ANY (ARRAY(SELECT ctid FROM picked))
    RETURNING account_id, event_id
)
SELECT account_id, event_id FROM claimed
"""

# How many were claimed, and the greatest (account, event id) claimed: where the next batch
# of the same pass starts.
BATCH_SUMMARY = """
SELECT count(*), max(ARRAY[account_id, event_id]) FROM rollup_claimed
"""

# The claimed events enter the rolled-up feed (models.RolledUpEvent, read by the push to the
# billing provider) in this same transaction: a batch that commits has moved its events from
# the inbox to the rollups and to the feed, one that rolls back has moved nothing. One
# INSERT ... SELECT per batch; sorted, so the feed's primary key (account, event) takes the
# rows page after page instead of scattered. No ON CONFLICT: the DELETE above hands each event
# to exactly one batch, once.
FEED_CLAIMED = """
INSERT INTO metering_rolledupevent (account_id, event_id)
SELECT account_id, event_id FROM rollup_claimed ORDER BY account_id, event_id
"""

# The claimed events, read by primary key in id order: the probes then walk the index and the
# table forwards (on the 10M-event bench data, by EXPLAIN: 68k instead of 86k page reads and
# about half the time of probing in the claimed, account order).
LOAD_CLAIMED = f"""
INSERT INTO rollup_events
SELECT e.id, e.account_id, e.meter_id, e.occurred_at, e.value, e.unique_value, e.properties,
       e.kind, e.corrects_id, {HOUR_OF}, {DAY_OF}, true, true, true
FROM (SELECT event_id FROM rollup_claimed ORDER BY event_id) c
JOIN metering_usageevent e ON e.id = c.event_id
JOIN metering_account a ON a.id = e.account_id
"""

HAS_CORRECTIONS = "SELECT EXISTS (SELECT 1 FROM rollup_events WHERE kind = 'correction')"

# A batch event stops counting once a correction of it has been rolled up (here: is no longer
# in the inbox, which includes corrections in this very batch). The partial index on
# corrects_id holds corrections only, so reading it whole is cheap.
MARK_SUPERSEDED = """
UPDATE rollup_events ev SET contributes = false
FROM metering_usageevent c
WHERE c.corrects_id = ev.id AND c.corrects_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = c.id)
"""

# Corrections in the batch whose original was rolled up by an earlier batch: the original's
# buckets must be recomputed (it no longer counts there). Originals still in the inbox, or in
# this batch, were never added, so nothing needs taking out.
CREATE_TOUCHED = """
CREATE TEMP TABLE rollup_touched_hours (
    account_id bigint NOT NULL, meter_id bigint NOT NULL, hour timestamptz NOT NULL,
    PRIMARY KEY (account_id, meter_id, hour)
) ON COMMIT DROP;
CREATE TEMP TABLE rollup_touched_days (
    account_id bigint NOT NULL, meter_id bigint NOT NULL, day date NOT NULL,
    PRIMARY KEY (account_id, meter_id, day)
) ON COMMIT DROP;
"""

TOUCH_CORRECTED_ORIGINALS = f"""
WITH originals AS (
    SELECT e.account_id, e.meter_id, {HOUR_OF} AS hour, {DAY_OF} AS day
    FROM rollup_events c
    JOIN metering_usageevent e ON e.id = c.corrects_id
    JOIN metering_account a ON a.id = e.account_id
    WHERE c.kind = 'correction'
      AND NOT EXISTS (SELECT 1 FROM rollup_events b WHERE b.id = e.id)
      AND NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = e.id)
), hours AS (
    INSERT INTO rollup_touched_hours SELECT DISTINCT account_id, meter_id, hour FROM originals
    ON CONFLICT DO NOTHING
)
INSERT INTO rollup_touched_days SELECT DISTINCT account_id, meter_id, day FROM originals
ON CONFLICT DO NOTHING
"""

# The raw events of the touched buckets, as they should count now: rolled up (not in the
# inbox) and effective (no rolled-up correction references them). Day windows are widened by a
# day on each side and then filtered on the exact local date, so no DST rule is re-derived here.
LOAD_TOUCHED = f"""
WITH wanted AS (
    SELECT e.id,
           bool_or(src.kind = 'h') AS for_hour,
           bool_or(src.kind = 'd') AS for_day
    FROM (
        SELECT 'h' AS kind, t.account_id, t.meter_id, t.hour AS lo, t.hour + interval '1 hour' AS hi,
               NULL::date AS day
        FROM rollup_touched_hours t
        UNION ALL
        SELECT 'd', t.account_id, t.meter_id,
               (t.day - 1)::timestamp AT TIME ZONE 'UTC', (t.day + 2)::timestamp AT TIME ZONE 'UTC',
               t.day
        FROM rollup_touched_days t
    ) src
    JOIN metering_usageevent e
      ON e.account_id = src.account_id AND e.meter_id = src.meter_id
     AND e.occurred_at >= src.lo AND e.occurred_at < src.hi
    JOIN metering_account a ON a.id = e.account_id
    WHERE src.kind = 'h' OR {DAY_OF} = src.day
    GROUP BY e.id
)
INSERT INTO rollup_events
SELECT e.id, e.account_id, e.meter_id, e.occurred_at, e.value, e.unique_value, e.properties,
       e.kind, e.corrects_id, {HOUR_OF}, {DAY_OF}, true, w.for_hour, w.for_day
FROM wanted w
JOIN metering_usageevent e ON e.id = w.id
JOIN metering_account a ON a.id = e.account_id
WHERE NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = e.id)
  AND NOT EXISTS (
      SELECT 1 FROM metering_usageevent c
      WHERE c.corrects_id = e.id AND c.corrects_id IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = c.id)
  )
"""

# The raw events of whole ranges (rebuild, self-check, the raw-aggregate selector): local days
# on or after `since` (and before `until`, when given) count for daily rows, UTC hours from
# `since` 00:00 UTC (to `until` 00:00 UTC) for hourly rows. `include_pending` also counts
# events still in the inbox, which is the aggregate a fully drained rollup must equal.
LOAD_RANGE = f"""
INSERT INTO rollup_events
SELECT * FROM (
    SELECT e.id, e.account_id, e.meter_id, e.occurred_at, e.value, e.unique_value, e.properties,
           e.kind, e.corrects_id, {HOUR_OF} AS hour, {DAY_OF} AS day, true,
           e.occurred_at >= %(hour_lo)s AND e.occurred_at < %(hour_hi)s AS for_hour,
           {DAY_OF} >= %(since)s AND {DAY_OF} < %(until)s AS for_day
    FROM metering_usageevent e
    JOIN metering_account a ON a.id = e.account_id
    WHERE e.account_id = ANY(%(account_ids)s)
      AND e.occurred_at >= %(scan_lo)s AND e.occurred_at < %(scan_hi)s
      AND (%(include_pending)s OR NOT EXISTS (
          SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = e.id))
      AND NOT EXISTS (
          SELECT 1 FROM metering_usageevent c
          WHERE c.corrects_id = e.id AND c.corrects_id IS NOT NULL
            AND (%(include_pending)s OR NOT EXISTS (
                SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = c.id))
      )
) loaded
WHERE for_hour OR for_day
"""

# One row per contributing event and dimension key of its meter, with the value as text
# (missing -> ""), cut to the column width.
CREATE_DIMS = """
CREATE TEMP TABLE rollup_event_dims ON COMMIT DROP AS
SELECT ev.id, ev.account_id, ev.meter_id, ev.hour, ev.day, ev.for_hour, ev.for_day,
       ev.occurred_at, ev.value, ev.unique_value, k.dim_key,
       left(coalesce(ev.properties ->> k.dim_key, ''), 255) AS raw_value
FROM rollup_events ev
JOIN metering_meter m ON m.id = ev.meter_id
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(m.dimensions) = 'array' THEN m.dimensions ELSE '[]'::jsonb END
) AS k(dim_key)
WHERE ev.contributes
"""

# Which dimension values fold into "other". Per (account, meter, local day, key) the kept
# values are the daily rows that exist (the registry; "other" is not a kept value); a new
# value is kept while fewer than %(cap)s are, first seen (lowest event id) first, and folds
# after that. Hourly rows use the mapping of the event's local day, so an hour and the day it
# belongs to always fold the same events.
#
# Only keys that could overflow (kept + distinct values in this input > cap) are examined
# value by value; for all others every value is kept and this produces no row.
FOLD_DIMS = """
CREATE TEMP TABLE rollup_dim_fold ON COMMIT DROP AS
WITH input_keys AS MATERIALIZED (
    SELECT account_id, meter_id, day, dim_key, count(DISTINCT raw_value) AS input_values
    FROM rollup_event_dims
    GROUP BY account_id, meter_id, day, dim_key
), risky AS MATERIALIZED (
    SELECT * FROM (
        SELECT k.*,
               (SELECT count(*) FROM metering_rollupdaily r
                WHERE r.account_id = k.account_id AND r.meter_id = k.meter_id
                  AND r.dim_key = k.dim_key AND r.day = k.day
                  AND r.dim_value <> %(other)s) AS kept
        FROM input_keys k
    ) counted
    WHERE kept + input_values > %(cap)s
), unregistered AS (
    SELECT d.account_id, d.meter_id, d.day, d.dim_key, d.raw_value, min(d.id) AS first_id
    FROM rollup_event_dims d
    JOIN risky USING (account_id, meter_id, day, dim_key)
    WHERE d.raw_value <> %(other)s
      AND NOT EXISTS (
          SELECT 1 FROM metering_rollupdaily r
          WHERE r.account_id = d.account_id AND r.meter_id = d.meter_id
            AND r.dim_key = d.dim_key AND r.day = d.day AND r.dim_value = d.raw_value
      )
    GROUP BY d.account_id, d.meter_id, d.day, d.dim_key, d.raw_value
), ranked AS (
    SELECT u.*, row_number() OVER (
        PARTITION BY account_id, meter_id, day, dim_key ORDER BY first_id) AS rn
    FROM unregistered u
)
SELECT r.account_id, r.meter_id, r.day, r.dim_key, r.raw_value
FROM ranked r
JOIN risky k USING (account_id, meter_id, day, dim_key)
WHERE r.rn > %(cap)s - k.kept
"""

# What each bucket receives: every contributing event once for the whole meter (dim_key "")
# and once per dimension key, with its value or "other".
CREATE_CONTRIB = """
CREATE TEMP TABLE rollup_contrib ON COMMIT DROP AS
SELECT ev.account_id, ev.meter_id, ''::text AS dim_key, ''::text AS dim_value, false AS folded,
       ev.hour, ev.day, ev.for_hour, ev.for_day, ev.id, ev.occurred_at, ev.value, ev.unique_value
FROM rollup_events ev
WHERE ev.contributes
UNION ALL
SELECT d.account_id, d.meter_id, d.dim_key,
       CASE WHEN f.raw_value IS NULL THEN d.raw_value ELSE %(other)s END,
       f.raw_value IS NOT NULL,
       d.hour, d.day, d.for_hour, d.for_day, d.id, d.occurred_at, d.value, d.unique_value
FROM rollup_event_dims d
LEFT JOIN rollup_dim_fold f USING (account_id, meter_id, day, dim_key, raw_value)
"""

# The aggregate of one bucket. `latest` is the value of the event with the greatest
# (occurred_at, id); taking the max of an [epoch microseconds, id, value] array finds it in
# one pass without sorting. Unique counts are only computed when asked (recompute and
# comparison); the additive path counts newly inserted distinct rows instead.
AGGREGATES = """
    count(c.value) AS count,
    coalesce(sum(c.value), 0) AS sum,
    max(c.value) AS max,
    (max(ARRAY[(extract(epoch FROM c.occurred_at) * 1000000)::numeric, c.id::numeric, c.value])
        FILTER (WHERE c.value IS NOT NULL))[3] AS latest_value,
    max(c.occurred_at) FILTER (WHERE c.value IS NOT NULL) AS latest_at,
    (max(ARRAY[(extract(epoch FROM c.occurred_at) * 1000000)::numeric, c.id::numeric, c.value])
        FILTER (WHERE c.value IS NOT NULL))[2]::bigint AS latest_event_id,
    {unique} AS unique_count,
    bool_or(c.folded) AS folded
"""
UNIQUE_EXACT = "count(DISTINCT c.unique_value) FILTER (WHERE c.unique_value <> '')"
UNIQUE_LATER = "0::bigint"


def aggregate_sql(*, grain: str, exact_unique: bool) -> str:
    """SELECT of the bucket aggregates of `rollup_contrib` for `grain` ("hour" or "day")."""
    bucket = _grain(grain)
    aggregates = AGGREGATES.format(unique=UNIQUE_EXACT if exact_unique else UNIQUE_LATER)
    return f"""
SELECT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.{bucket} AS bucket, {aggregates}
FROM rollup_contrib c
WHERE c.for_{bucket}
GROUP BY c.account_id, c.meter_id, c.dim_key, c.{bucket}, c.dim_value
"""


def _grain(grain: str) -> str:
    if grain not in {"hour", "day"}:
        raise ValueError(f"grain must be 'hour' or 'day', not {grain!r}")
    return grain


def table(grain: str) -> str:
    return "metering_rolluphourly" if _grain(grain) == "hour" else "metering_rollupdaily"


def distinct_table(grain: str) -> str:
    return (
        "metering_rolluphourlydistinct"
        if _grain(grain) == "hour"
        else "metering_rollupdailydistinct"
    )


STAT_COLUMNS = (
    "count",
    "sum",
    "max",
    "latest_value",
    "latest_at",
    "latest_event_id",
    "unique_count",
    "folded",
)


def distinct_additive_sql(grain: str) -> str:
    """Insert the batch's distinct unique values and keep, per bucket, how many were new to it
    (ON CONFLICT DO NOTHING ... RETURNING tells which are new) in rollup_new_distinct_<grain>,
    for the upsert that follows to add to unique_count. Runs before the upsert so each rollup
    row is written once per batch."""
    bucket = _grain(grain)
    return f"""
CREATE TEMP TABLE rollup_new_distinct_{bucket} ON COMMIT DROP AS
WITH inserted AS (
    INSERT INTO {distinct_table(grain)} (account_id, meter_id, dim_key, dim_value, {bucket}, value)
    SELECT DISTINCT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.{bucket}, c.unique_value
    FROM rollup_contrib c
    WHERE c.for_{bucket} AND c.unique_value <> ''
    ON CONFLICT DO NOTHING
    RETURNING account_id, meter_id, dim_key, dim_value, {bucket}
)
SELECT account_id, meter_id, dim_key, dim_value, {bucket} AS bucket, count(*) AS n
FROM inserted
GROUP BY account_id, meter_id, dim_key, dim_value, {bucket}
"""


def upsert_additive_sql(grain: str, *, with_new_distinct: bool) -> str:
    """Merge a batch into the rollups: counts and sums add, max takes the greater, latest keeps
    the greater (latest_at, latest_event_id), folded sticks, unique_count grows by the values
    new to the bucket (from distinct_additive_sql, when the batch has unique values). NULLs
    from a side with no values leave the other side as it is (GREATEST ignores NULLs; a NULL
    row comparison is not true).

    Rows go in primary-key order, so each index leaf page is visited once per batch (a quarter
    less time than hash order on a large table), and two writers could not deadlock on the
    order they lock rows in (they cannot meet anyway: writers hold the rollup lock).
    """
    bucket = _grain(grain)
    target = table(grain)
    newer = (
        "(r.latest_at IS NULL OR (excluded.latest_at, excluded.latest_event_id)"
        " > (r.latest_at, r.latest_event_id))"
    )
    columns = [c if c != "unique_count" else "coalesce(nd.n, 0)" for c in STAT_COLUMNS]
    source = aggregate_sql(grain=grain, exact_unique=False)
    if with_new_distinct:
        source = f"""
SELECT agg.account_id, agg.meter_id, agg.dim_key, agg.dim_value, agg.bucket,
       {", ".join(c if c.startswith("coalesce") else f"agg.{c}" for c in columns)}
FROM ({source}) agg
LEFT JOIN rollup_new_distinct_{bucket} nd
  ON nd.account_id = agg.account_id AND nd.meter_id = agg.meter_id
 AND nd.dim_key = agg.dim_key AND nd.dim_value = agg.dim_value AND nd.bucket = agg.bucket
"""
    return f"""
INSERT INTO {target} AS r
    (account_id, meter_id, dim_key, dim_value, {bucket}, {", ".join(STAT_COLUMNS)})
SELECT * FROM ({source}) src ORDER BY 1, 2, 3, 5, 4
ON CONFLICT (account_id, meter_id, dim_key, {bucket}, dim_value) DO UPDATE SET
    count = r.count + excluded.count,
    sum = r.sum + excluded.sum,
    max = GREATEST(r.max, excluded.max),
    latest_value = CASE WHEN {newer} AND excluded.latest_at IS NOT NULL
                        THEN excluded.latest_value ELSE r.latest_value END,
    latest_event_id = CASE WHEN {newer} AND excluded.latest_at IS NOT NULL
                           THEN excluded.latest_event_id ELSE r.latest_event_id END,
    latest_at = CASE WHEN {newer} AND excluded.latest_at IS NOT NULL
                     THEN excluded.latest_at ELSE r.latest_at END,
    unique_count = r.unique_count + excluded.unique_count,
    folded = r.folded OR excluded.folded
"""


def reset_touched_sql(grain: str) -> str:
    """Empty the touched buckets before they are recomputed. Rows are kept (zeroed), not
    deleted: daily dimension rows are the registry of kept values, and a recompute must not
    change which values are kept. Their distinct values are deleted and re-inserted."""
    bucket = _grain(grain)
    touched = f"rollup_touched_{bucket}s"
    return f"""
UPDATE {table(grain)} r
SET count = 0, sum = 0, max = NULL, latest_value = NULL, latest_at = NULL,
    latest_event_id = NULL, unique_count = 0, folded = false
FROM {touched} t
WHERE r.account_id = t.account_id AND r.meter_id = t.meter_id AND r.{bucket} = t.{bucket};
DELETE FROM {distinct_table(grain)} r
USING {touched} t
WHERE r.account_id = t.account_id AND r.meter_id = t.meter_id AND r.{bucket} = t.{bucket};
"""


def upsert_overwrite_sql(grain: str) -> str:
    """Write recomputed buckets: every stat column takes the recomputed value."""
    bucket = _grain(grain)
    sets = ", ".join(f"{column} = excluded.{column}" for column in STAT_COLUMNS)
    return f"""
INSERT INTO {table(grain)} AS r
    (account_id, meter_id, dim_key, dim_value, {bucket}, {", ".join(STAT_COLUMNS)})
{aggregate_sql(grain=grain, exact_unique=True)}
ON CONFLICT (account_id, meter_id, dim_key, {bucket}, dim_value) DO UPDATE SET {sets}
"""


def distinct_overwrite_sql(grain: str) -> str:
    bucket = _grain(grain)
    return f"""
INSERT INTO {distinct_table(grain)} (account_id, meter_id, dim_key, dim_value, {bucket}, value)
SELECT DISTINCT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.{bucket}, c.unique_value
FROM rollup_contrib c
WHERE c.for_{bucket} AND c.unique_value <> ''
ON CONFLICT DO NOTHING
"""


def delete_range_sql(grain: str) -> str:
    """Drop the rows of a rebuilt range (registry included: a rebuild chooses kept values
    afresh, first seen first)."""
    bucket = _grain(grain)
    bound = "%(since_utc)s" if bucket == "hour" else "%(since)s"
    upper = "%(until_utc)s" if bucket == "hour" else "%(until)s"
    return f"""
DELETE FROM {table(grain)}
WHERE account_id = ANY(%(account_ids)s) AND {bucket} >= {bound} AND {bucket} < {upper};
DELETE FROM {distinct_table(grain)}
WHERE account_id = ANY(%(account_ids)s) AND {bucket} >= {bound} AND {bucket} < {upper};
"""


# --- Comparison (self-check and tests) ---------------------------------------------------------

# Expected rows for a range, next to the rows found, bucket by bucket. An empty row (all zero:
# zeroed by a recompute and kept as a registry entry, or holding only a void correction) and a
# missing row are the same thing.
EMPTY = (
    "({r}.count = 0 AND {r}.sum = 0 AND {r}.max IS NULL AND {r}.latest_event_id IS NULL"
    " AND {r}.unique_count = 0 AND NOT {r}.folded)"
)


def compare_sql(grain: str) -> str:
    """Buckets (account, meter, hour|day) whose rows differ from the expected aggregate, with
    the first differing row as an example. Expects `rollup_expected_<grain>` (the overwrite
    aggregate) and `rollup_expected_distinct_<grain>`, and compares the range given by
    %(account_ids)s and the since/until bounds."""
    bucket = _grain(grain)
    lo = "%(since_utc)s" if bucket == "hour" else "%(since)s"
    hi = "%(until_utc)s" if bucket == "hour" else "%(until)s"
    different = " OR ".join(f"x.{c} IS DISTINCT FROM f.{c}" for c in STAT_COLUMNS)
    return f"""
WITH found AS (
    SELECT * FROM {table(grain)}
    WHERE account_id = ANY(%(account_ids)s) AND {bucket} >= {lo} AND {bucket} < {hi}
), rows AS (
    SELECT coalesce(x.account_id, f.account_id) AS account_id,
           coalesce(x.meter_id, f.meter_id) AS meter_id,
           coalesce(x.bucket, f.{bucket}) AS bucket,
           coalesce(x.dim_key, f.dim_key) AS dim_key,
           coalesce(x.dim_value, f.dim_value) AS dim_value,
           CASE
               WHEN x.account_id IS NULL THEN NOT {EMPTY.format(r="f")}
               WHEN f.account_id IS NULL THEN NOT {EMPTY.format(r="x")}
               ELSE {different}
           END AS drifted,
           to_jsonb(x) AS expected, to_jsonb(f) AS found
    FROM rollup_expected_{bucket} x
    FULL JOIN found f
      ON f.account_id = x.account_id AND f.meter_id = x.meter_id AND f.dim_key = x.dim_key
     AND f.{bucket} = x.bucket AND f.dim_value = x.dim_value
), distinct_found AS (
    SELECT account_id, meter_id, dim_key, dim_value, {bucket} AS bucket, value
    FROM {distinct_table(grain)}
    WHERE account_id = ANY(%(account_ids)s) AND {bucket} >= {lo} AND {bucket} < {hi}
), distinct_drift AS (
    SELECT coalesce(x.account_id, f.account_id) AS account_id,
           coalesce(x.meter_id, f.meter_id) AS meter_id,
           coalesce(x.bucket, f.bucket) AS bucket
    FROM rollup_expected_distinct_{bucket} x
    FULL JOIN distinct_found f USING (account_id, meter_id, dim_key, dim_value, bucket, value)
    WHERE x.account_id IS NULL OR f.account_id IS NULL
)
SELECT account_id, meter_id, bucket, count(*) AS rows_checked,
       count(*) FILTER (WHERE drifted) AS rows_drifted,
       (array_agg(jsonb_build_object('dim_key', dim_key, 'dim_value', dim_value,
                                     'expected', expected, 'found', found))
            FILTER (WHERE drifted))[1] AS example,
       false AS distinct_drift
FROM rows
GROUP BY account_id, meter_id, bucket
UNION ALL
SELECT DISTINCT account_id, meter_id, bucket, 0, 1, NULL::jsonb, true FROM distinct_drift
"""


def expected_sql(grain: str) -> str:
    bucket = _grain(grain)
    return f"""
CREATE TEMP TABLE rollup_expected_{bucket} ON COMMIT DROP AS
{aggregate_sql(grain=grain, exact_unique=True)};
CREATE TEMP TABLE rollup_expected_distinct_{bucket} ON COMMIT DROP AS
SELECT DISTINCT c.account_id, c.meter_id, c.dim_key, c.dim_value, c.{bucket} AS bucket,
       c.unique_value AS value
FROM rollup_contrib c
WHERE c.for_{bucket} AND c.unique_value <> '';
"""
