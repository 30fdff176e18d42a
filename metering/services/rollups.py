"""Rollups: exact hourly (UTC) and daily (account zone) aggregates, applied exactly once.

What a rollup row holds (see RollupBucket): for the events that count in its bucket,
`count` = COUNT(value), `sum` = SUM(value), `max` = MAX(value), `latest_*` = the value, time
and id of the event with the greatest (occurred_at, id) among those with a value, and
`unique_count` = COUNT(DISTINCT unique_value) over non-empty values. Meters store their value
so that these five cover the five aggregations: count meters store value 1, sum/max/latest
meters the decimal, unique_count meters the text in `unique_value` (value NULL). A void
correction has neither and counts nothing.

Which events count: the *effective* ones, those no correction references. A correction replaces
what it corrects: the original stops counting and the correction counts in its own bucket.

How it stays exact:

- Every event gets an inbox row in its own transaction (the API's insert statement, or the
  trigger of migration 0002 for other writers). A drain
  deletes a batch of inbox rows (DELETE ... RETURNING: of two deleters of a row, only one gets
  it) and merges those events into the rollups in the same transaction. Committed: the events are in the rollups and out of the
  inbox. Rolled back (a crash, an error): neither. An event committed late is simply in the
  inbox later; there is no watermark to skip it.
- The same transaction appends the batch's events to the rolled-up feed (RolledUpEvent), from
  which the push to the billing provider claims them: one queue row per event at ingestion,
  and downstream sees an event exactly once, once it is in the rollups.
- Merging is additive (count, sum), GREATEST (max), tie-broken by (occurred_at, id) (latest),
  and distinct-value inserts (unique_count), so batches combine in any order.
- A correction whose original was already rolled up makes the original's buckets (its hour
  and its local day, every dimension row of them) be recomputed from the raw events in the
  same transaction. An original drained after its correction is simply not added. Rolled-up
  state is therefore always "the aggregate of the rolled-up, effective events".
- Drains, rebuilds and the self-check take transaction-level advisory locks: a drain holds the
  locks of its accounts' slots (drains of other accounts run alongside), a rebuild or check
  holds the rollup lock exclusively. So recomputes (which overwrite) and the dimension cap
  (which counts kept values) never race another writer of the same account.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from metering import rollups_sql as q
from metering.models import ROLLUP_OTHER, Account, RollupCheck

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50_000
# "No upper bound" for ranges: far enough, and still a valid date after adding two days.
FAR_FUTURE = date(9999, 1, 1)
EVENT_TABLES = ("rollup_events", "rollup_event_dims", "rollup_dim_fold", "rollup_contrib")
TEMP_TABLES = (
    *EVENT_TABLES,
    "rollup_claimed",
    "rollup_new_distinct_hour",
    "rollup_new_distinct_day",
    "rollup_touched_hours",
    "rollup_touched_days",
    "rollup_expected_hour",
    "rollup_expected_day",
    "rollup_expected_distinct_hour",
    "rollup_expected_distinct_day",
)


def dimension_cap() -> int:
    return int(getattr(settings, "ROLLUP_MAX_DIMENSION_VALUES", 100))


def batch_size_default() -> int:
    return int(getattr(settings, "ROLLUP_BATCH_SIZE", DEFAULT_BATCH_SIZE))


class RollupBusy(Exception):
    """Another drain, rebuild or self-check holds the rollup lock."""


@dataclass
class DrainResult:
    events: int = 0
    batches: int = 0
    recomputed_buckets: int = 0
    busy: bool = False


# --- building blocks (one transaction each, run under the rollup lock) --------------------------


def _lock(cursor, *, wait: bool) -> bool:
    """The rollup lock, exclusive: no drain runs meanwhile (rebuilds, the self-check)."""
    if wait:
        cursor.execute(q.WAIT_LOCK, {"key": q.ROLLUP_LOCK_KEY})
        return True
    cursor.execute(q.TRY_LOCK, {"key": q.ROLLUP_LOCK_KEY})
    return bool(cursor.fetchone()[0])


def drain_slots(partition: int, partitions: int) -> list[int]:
    """The account slots (rollups_sql.ACCOUNT_SLOTS) that drain `partition` of `partitions`
    covers."""
    if not 1 <= partitions <= q.ACCOUNT_SLOTS:
        raise ValueError(f"partitions must be between 1 and {q.ACCOUNT_SLOTS}, not {partitions}")
    if not 0 <= partition < partitions:
        raise ValueError(f"partition must be between 0 and {partitions - 1}, not {partition}")
    return [slot for slot in range(q.ACCOUNT_SLOTS) if slot % partitions == partition]


def _lock_slots(cursor, slots: Sequence[int], *, wait: bool) -> list[int]:
    """The rollup lock shared, then each slot's lock: the slots this transaction may drain.
    With `wait=False`, only those no other drain holds, and none while a rebuild or a check
    holds the rollup lock."""
    if wait:
        cursor.execute(q.WAIT_LOCK_SHARED, {"key": q.ROLLUP_LOCK_KEY})
    else:
        cursor.execute(q.TRY_LOCK_SHARED, {"key": q.ROLLUP_LOCK_KEY})
        if not cursor.fetchone()[0]:
            return []
    held = []
    for slot in sorted(slots):
        cursor.execute(q.WAIT_LOCK if wait else q.TRY_LOCK, {"key": q.slot_lock_key(slot)})
        if wait or cursor.fetchone()[0]:
            held.append(slot)
    return held


def _begin(cursor) -> None:
    # Temporary tables are ON COMMIT DROP, but inside an enclosing transaction (a test, a
    # caller's atomic block) commit is later, so start from a clean slate explicitly.
    cursor.execute(f"DROP TABLE IF EXISTS {', '.join(TEMP_TABLES)}")
    cursor.execute(q.TUNE)


def _drop_event_tables(cursor) -> None:
    cursor.execute(f"DROP TABLE IF EXISTS {', '.join(EVENT_TABLES)}")


def _prepare_contributions(cursor) -> None:
    """rollup_events -> rollup_contrib (one row per event and per dimension key)."""
    cursor.execute(q.CREATE_DIMS)
    cursor.execute(q.FOLD_DIMS, {"cap": dimension_cap(), "other": ROLLUP_OTHER})
    cursor.execute(q.CREATE_CONTRIB, {"other": ROLLUP_OTHER})


def _merge_additive(cursor) -> None:
    cursor.execute("SELECT EXISTS (SELECT 1 FROM rollup_contrib WHERE unique_value <> '')")
    has_unique = cursor.fetchone()[0]
    for grain in ("hour", "day"):
        if has_unique:
            cursor.execute(q.distinct_additive_sql(grain))
        cursor.execute(q.upsert_additive_sql(grain, with_new_distinct=has_unique))


def _write_overwrite(cursor) -> None:
    for grain in ("hour", "day"):
        cursor.execute(q.upsert_overwrite_sql(grain))
        cursor.execute(q.distinct_overwrite_sql(grain))


def _recompute_touched(cursor) -> int:
    """Recompute every bucket listed in rollup_touched_hours/days from the raw events."""
    cursor.execute(
        "SELECT (SELECT count(*) FROM rollup_touched_hours)"
        " + (SELECT count(*) FROM rollup_touched_days)"
    )
    touched = cursor.fetchone()[0]
    if not touched:
        return 0
    _drop_event_tables(cursor)
    cursor.execute(q.CREATE_EVENTS)
    cursor.execute(q.LOAD_TOUCHED)
    _prepare_contributions(cursor)
    for grain in ("hour", "day"):
        cursor.execute(q.reset_touched_sql(grain))
    _write_overwrite(cursor)
    return touched


def _drain_batch(
    cursor,
    *,
    after: tuple[int, int],
    limit: int,
    slots: Sequence[int] = tuple(range(q.ACCOUNT_SLOTS)),
) -> tuple[int, tuple[int, int], int]:
    """Claim up to `limit` inbox rows past `after` (an (account id, event id) position), of
    accounts in `slots`, and merge them. Returns (events, the last position claimed,
    recomputed buckets). The caller holds the locks of `slots`, or the rollup lock."""
    params = {"after_account": after[0], "after_id": after[1], "limit": limit}
    params.update(slot_count=q.ACCOUNT_SLOTS, slots=list(slots))
    cursor.execute(q.CLAIM_BATCH, params)
    cursor.execute(q.BATCH_SUMMARY)
    count, last = cursor.fetchone()
    if not count:
        return 0, after, 0
    cursor.execute(q.FEED_CLAIMED)
    # Temporary tables have no statistics until analysed; with them the planner sizes the joins
    # below right (tens of milliseconds for a 50k batch).
    cursor.execute("ANALYZE rollup_claimed")
    cursor.execute(q.CREATE_EVENTS)
    cursor.execute(q.LOAD_CLAIMED)
    cursor.execute(q.MARK_SUPERSEDED)
    cursor.execute(q.HAS_CORRECTIONS)
    has_corrections = cursor.fetchone()[0]
    cursor.execute(q.CREATE_TOUCHED)
    if has_corrections:
        cursor.execute(q.TOUCH_CORRECTED_ORIGINALS)
    _prepare_contributions(cursor)
    _merge_additive(cursor)
    recomputed = _recompute_touched(cursor) if has_corrections else 0
    return count, (last[0], last[1]), recomputed


# --- drain ---------------------------------------------------------------------------------------


def rollup_drain(
    *,
    batch_size: int | None = None,
    max_batches: int | None = None,
    wait: bool = True,
    progress: Callable[[int], None] | None = None,
    partition: int = 0,
    partitions: int = 1,
) -> DrainResult:
    """Fold pending events (the inbox) into the rollups, one transaction per batch.

    `partition` of `partitions` says which accounts this run drains (see
    rollups_sql.ACCOUNT_SLOTS): runs of different partitions work side by side, runs of the
    same one take turns. Each batch takes the locks of its accounts' slots: with `wait=False`
    a run drains the slots no other run holds and returns at once (`busy=True`) when it holds
    none, which is what a scheduled task wants. Batches go in (account, event id) order (see
    rollups_sql.CLAIM_BATCH). The run ends when a pass from the start finds fewer than a batch
    (caught up), or after `max_batches`. Safe to run any number of times, concurrently
    included.
    """
    limit = batch_size or batch_size_default()
    slots = drain_slots(partition, partitions)
    result = DrainResult()
    start = (0, 0)
    after = start
    while max_batches is None or result.batches < max_batches:
        with transaction.atomic(), connection.cursor() as cursor:
            held = _lock_slots(cursor, slots, wait=wait)
            if not held:
                result.busy = True
                return result
            result.busy = result.busy or len(held) < len(slots)
            _begin(cursor)
            cursor.execute(q.ASYNC_COMMIT)
            count, last, recomputed = _drain_batch(cursor, after=after, limit=limit, slots=held)
        if count:
            result.batches += 1
            result.events += count
            result.recomputed_buckets += recomputed
            if progress:
                progress(count)
        if count >= limit:
            after = last
        elif after != start:
            # The tail is reached; one more pass from the start picks up rows whose
            # transactions committed after we passed their position.
            after = start
        else:
            break
    return result


def rollup_drain_parallel(
    *,
    workers: int,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> DrainResult:
    """Drain with `workers` partitions at once, one thread (and database connection) each,
    waiting for locks; the results summed. For `manage.py rollup --workers` and the bench; the
    scheduled task fans out to one Celery task per partition instead."""
    if workers == 1:
        return rollup_drain(batch_size=batch_size, progress=progress)
    drain_slots(0, workers)  # validates `workers` before any thread starts
    results: list[DrainResult | None] = [None] * workers
    errors: list[BaseException] = []
    reporting = threading.Lock()

    def report(n: int) -> None:
        with reporting:
            progress(n)

    def run(partition: int) -> None:
        try:
            results[partition] = rollup_drain(
                batch_size=batch_size,
                progress=report if progress else None,
                partition=partition,
                partitions=workers,
            )
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(k,), name=f"rollup-{k}") for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    total = DrainResult()
    for part in results:
        total.events += part.events
        total.batches += part.batches
        total.recomputed_buckets += part.recomputed_buckets
    return total


def rollup_pending_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_rollupinbox")
        return cursor.fetchone()[0]


# --- rebuild ---------------------------------------------------------------------------------


def rollup_range_params(
    *, account_ids: Sequence[int], since: date, until: date, pending: bool
) -> dict:
    since_utc = datetime.combine(since, time(0), tzinfo=UTC)
    until_utc = datetime.combine(until, time(0), tzinfo=UTC)
    return {
        "account_ids": list(account_ids),
        "since": since,
        "until": until,
        "since_utc": since_utc,
        "until_utc": until_utc,
        "hour_lo": since_utc,
        "hour_hi": until_utc,
        # Local days reach at most 14 hours either side of the UTC day.
        "scan_lo": since_utc - timedelta(days=1),
        "scan_hi": until_utc + timedelta(days=1),
        "include_pending": pending,
    }


def _load_range(cursor, params: dict) -> None:
    cursor.execute(q.CREATE_EVENTS)
    cursor.execute(q.LOAD_RANGE, params)


def rollup_expected_rows(cursor, params: dict, *, grain: str) -> list[tuple]:
    """The rows the rollups of a range should hold, from the raw events (see rollup_range_params
    for the range; the column order is that of rollups_sql.aggregate_sql). Runs inside the
    caller's transaction and leaves no temporary table behind."""
    _begin(cursor)
    _load_range(cursor, params)
    _prepare_contributions(cursor)
    cursor.execute(q.aggregate_sql(grain=grain, exact_unique=True))
    rows = cursor.fetchall()
    _begin(cursor)
    return rows


def _chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _account_ids(account_ids: Iterable[int] | None) -> list[int]:
    if account_ids is None:
        return list(Account.objects.order_by("pk").values_list("pk", flat=True))
    return sorted(set(account_ids))


def rollups_rebuild(
    *,
    since: date,
    account_ids: Iterable[int] | None = None,
    until: date | None = None,
    accounts_per_transaction: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Recompute rollups from the raw events: local days from `since` (before `until`) and UTC
    hours from the day before `since`, for the given accounts (all by default).

    The rows of the range are deleted first, so the kept dimension values are chosen afresh
    (first seen first). Events still in the inbox are left to the next drain, which adds them
    on top as usual. Returns the number of accounts rebuilt; `progress` gets accounts done.
    """
    ids = _account_ids(account_ids)
    until = until or FAR_FUTURE
    for chunk in _chunks(ids, accounts_per_transaction):
        params = rollup_range_params(account_ids=chunk, since=since, until=until, pending=False)
        # Hourly rows from the UTC day before: an hour just before `since` 00:00 UTC can hold
        # events of local day `since` (zones ahead of UTC), whose kept dimension values are
        # chosen afresh here, so its dimension rows are recomputed too.
        params["since_utc"] = params["hour_lo"] = params["since_utc"] - timedelta(days=1)
        params["scan_lo"] = params["since_utc"] - timedelta(days=1)
        with transaction.atomic(), connection.cursor() as cursor:
            _lock(cursor, wait=True)
            _begin(cursor)
            for grain in ("hour", "day"):
                cursor.execute(q.delete_range_sql(grain), params)
            _load_range(cursor, params)
            _prepare_contributions(cursor)
            _write_overwrite(cursor)
        if progress:
            progress(len(chunk))
    return len(ids)


def rollups_rebuild_account_daily(*, account_id: int) -> None:
    """Rebuild an account's rollups after its time zone changed.

    Daily rows move to the new zone's days. Hourly rows are UTC and do not move, but their
    dimension rows fold values by the kept values of each event's local day, so they are
    rebuilt too: the account is rebuilt from its first event on.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT min(occurred_at) FROM metering_usageevent WHERE account_id = %s", [account_id]
        )
        first = cursor.fetchone()[0]
    if first is None:
        return
    rollups_rebuild(
        since=first.astimezone(UTC).date() - timedelta(days=1), account_ids=[account_id]
    )


# --- self-check ------------------------------------------------------------------------------


@dataclass
class SelfCheckFindings:
    buckets_checked: int = 0
    drifted: list[dict] = field(default_factory=list)


def _check_chunk(cursor, params: dict, *, repair: bool) -> tuple[int, list[dict], int]:
    """Compare one chunk of accounts; returns (buckets checked, drifted buckets, repaired)."""
    _load_range(cursor, params)
    _prepare_contributions(cursor)
    checked = 0
    drifted: dict[tuple, dict] = {}
    for grain in ("hour", "day"):
        cursor.execute(q.expected_sql(grain))
        cursor.execute(q.compare_sql(grain), params)
        for (
            account_id,
            meter_id,
            bucket,
            _rows,
            rows_drifted,
            example,
            distinct,
        ) in cursor.fetchall():
            key = (grain, account_id, meter_id, bucket)
            if not distinct:
                checked += 1
            if not rows_drifted:
                continue
            entry = drifted.setdefault(
                key,
                {
                    "grain": grain,
                    "account_id": account_id,
                    "meter_id": meter_id,
                    "bucket": bucket.isoformat(),
                    "rows_drifted": 0,
                    "distinct_values_drifted": False,
                    "example": None,
                },
            )
            if distinct:
                entry["distinct_values_drifted"] = True
            else:
                entry["rows_drifted"] = rows_drifted
                entry["example"] = example
    repaired = 0
    if drifted and repair:
        cursor.execute(q.CREATE_TOUCHED)
        for grain, touched in (("hour", "rollup_touched_hours"), ("day", "rollup_touched_days")):
            keys = sorted(key[1:] for key in drifted if key[0] == grain)
            if keys:
                cursor.executemany(
                    f"INSERT INTO {touched} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", keys
                )
        repaired = _recompute_touched(cursor)
    return checked, list(drifted.values()), repaired


def rollup_self_check(
    *,
    days: int = 3,
    today: date | None = None,
    account_ids: Iterable[int] | None = None,
    repair: bool = True,
    accounts_per_transaction: int = 500,
    details_limit: int = 50,
) -> RollupCheck:
    """Compare the rollups of the last `days` days (and today) with the raw events, repair any
    bucket that differs by recomputing it, and record what was found in a RollupCheck.

    Compared: every row (whole meter and each dimension value) of each UTC hour and local
    day in the window, all stat columns, and the distinct values behind unique counts. Events
    still in the inbox are excluded on both sides (the next drain adds them).
    """
    today = today or timezone.now().astimezone(UTC).date()
    since = today - timedelta(days=days)
    # Local dates run up to 14 hours ahead of UTC.
    until = today + timedelta(days=2)
    check = RollupCheck.objects.create(started_at=timezone.now(), since=since, until=until)
    ids = _account_ids(account_ids)
    checked = repaired = 0
    drifted: list[dict] = []
    try:
        for chunk in _chunks(ids, accounts_per_transaction):
            params = rollup_range_params(account_ids=chunk, since=since, until=until, pending=False)
            with transaction.atomic(), connection.cursor() as cursor:
                _lock(cursor, wait=True)
                _begin(cursor)
                c, d, r = _check_chunk(cursor, params, repair=repair)
            checked += c
            drifted.extend(d)
            repaired += r
    except Exception as exc:
        check.status = RollupCheck.Status.FAILED
        check.details = {"error": repr(exc), "drifted": drifted[:details_limit]}
        check.finished_at = timezone.now()
        check.buckets_checked = checked
        check.drifted = len(drifted)
        check.save()
        raise
    check.buckets_checked = checked
    check.drifted = len(drifted)
    check.repaired = repaired
    check.status = RollupCheck.Status.REPAIRED if drifted else RollupCheck.Status.CLEAN
    check.details = {"drifted": drifted[:details_limit], "truncated": len(drifted) > details_limit}
    check.finished_at = timezone.now()
    check.save()
    if drifted:
        logger.warning("rollup self-check found %d drifted buckets; repaired", len(drifted))
    return check
