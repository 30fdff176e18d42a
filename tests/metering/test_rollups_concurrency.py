"""Exactly once: crashes, overlapping drains, rows locked by someone else, and the proof under
concurrent ingestion."""

from __future__ import annotations

import random
import threading
import time
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from metering.models import (
    Meter,
    RolledUpEvent,
    RollupDaily,
    RollupHourly,
    RollupInbox,
    UsageEvent,
)
from metering.rollup_selectors import usage_total
from metering.services import rollups
from metering.services.corrections import CorrectionError, usage_event_correct
from metering.services.ingest import events_ingest
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import (
    assert_rollups_match_python,
    assert_rollups_match_sql,
    effective_events,
    event,
    insert,
    utc,
)

A = Meter.Aggregation


def _in_thread(target, *args, **kwargs) -> threading.Thread:
    """Run target in a thread with its own connection, re-raising its error on join."""
    errors: list[BaseException] = []

    def run():
        try:
            target(*args, **kwargs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _join(*threads: threading.Thread, timeout: float = 120) -> None:
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "thread did not finish"
        if thread.errors:  # type: ignore[attr-defined]
            raise thread.errors[0]  # type: ignore[attr-defined]


def _some_events(n: int = 30):
    acct = AccountFactory(timezone="Asia/Kolkata")
    spend = MeterFactory(
        code="bytes", aggregation=A.SUM, value_property="bytes", dimensions=["region"]
    )
    users = MeterFactory(code="users", aggregation=A.UNIQUE_COUNT, value_property="user")
    t = utc(2024, 3, 1, 17)
    return insert(
        *(
            event(
                acct,
                spend,
                t + timedelta(minutes=9 * i),
                f"{i}.5",
                properties={"region": f"r{i % 4}"},
            )
            for i in range(n)
        ),
        *(event(acct, users, t + timedelta(minutes=9 * i), unique=f"u{i % 7}") for i in range(n)),
    )


@pytest.mark.django_db(transaction=True)
def test_a_crash_after_claiming_leaves_the_events_in_the_inbox(monkeypatch):
    events = _some_events()
    merge = rollups._merge_additive
    seen_inside: list[int] = []

    def merge_then_crash(cursor):
        merge(cursor)
        cursor.execute("SELECT count(*) FROM metering_rollupinbox")
        seen_inside.append(cursor.fetchone()[0])
        raise RuntimeError("worker killed")

    monkeypatch.setattr(rollups, "_merge_additive", merge_then_crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        rollups.rollup_drain(batch_size=1000)

    # Inside the failed transaction the batch was already deleted from the inbox...
    assert seen_inside == [0]
    # ...and the rollback put every row back and wrote no rollup.
    assert RollupInbox.objects.count() == len(events)
    assert not RollupDaily.objects.exists()
    assert not RollupHourly.objects.exists()

    monkeypatch.setattr(rollups, "_merge_additive", merge)
    assert rollups.rollup_drain().events == len(events)
    assert_rollups_match_sql()
    assert_rollups_match_python()


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_drains_apply_every_event_once():
    events = _some_events(60)
    results: list[rollups.DrainResult] = []
    start = threading.Barrier(2)

    def drain():
        start.wait()
        results.append(rollups.rollup_drain(batch_size=7))

    _join(_in_thread(drain), _in_thread(drain))

    assert sum(r.events for r in results) == len(events)
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    assert_rollups_match_python()


def _wait_until_blocked_on_a_row_lock(timeout: float = 30) -> None:
    """Poll until some other backend of this database waits on a lock."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid())"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("no backend ever waited on a lock")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_inbox_rows_another_transaction_is_deleting_are_applied_once(outcome):
    """A rogue claimer (no slot lock) deletes some inbox rows and has not committed: a drain
    that reaches them waits, then takes them only if that transaction rolled back."""
    events = _some_events(10)
    taken_ids = sorted(e.pk for e in events)[:3]
    deleted, finish = threading.Event(), threading.Event()

    def rogue_claimer():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM metering_rollupinbox WHERE event_id = ANY(%s)", [taken_ids])
            deleted.set()
            assert finish.wait(30)
            if outcome == "rollback":
                transaction.set_rollback(True)

    def drain():
        results.append(rollups.rollup_drain())

    results: list[rollups.DrainResult] = []
    rogue = _in_thread(rogue_claimer)
    assert deleted.wait(30)
    drainer = _in_thread(drain)
    try:
        _wait_until_blocked_on_a_row_lock()
        assert not results, "the drain went past rows another transaction was deleting"
    finally:
        finish.set()
        _join(rogue, drainer)

    expected = len(events) - 3 if outcome == "commit" else len(events)
    assert results[0].events == expected
    fed = set(RolledUpEvent.objects.values_list("event_id", flat=True))
    assert fed == {e.pk for e in events if outcome == "rollback" or e.pk not in taken_ids}
    assert not RollupInbox.objects.exists()
    if outcome == "rollback":
        assert_rollups_match_sql()
        assert_rollups_match_python()
    else:
        # The three the rogue took (the lowest ids: sum events) are its to apply; the drain
        # counted every other event once and none of those three.
        spend_id = events[0].meter_id
        assert {e.meter_id for e in events if e.pk in taken_ids} == {spend_id}
        rest = [e for e in events if e.meter_id == spend_id and e.pk not in taken_ids]
        rows = RollupDaily.objects.filter(meter_id=spend_id, dim_key="")
        assert sum(r.count for r in rows) == len(rest) == 7
        assert sum(r.sum for r in rows) == sum(e.value for e in rest)


@pytest.mark.django_db(transaction=True)
def test_a_drain_that_finds_the_lock_taken_returns_busy_without_draining():
    _some_events(5)
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        with transaction.atomic(), connection.cursor() as cursor:
            rollups._lock(cursor, wait=True)
            locked.set()
            release.wait(30)

    holder = _in_thread(hold_lock)
    assert locked.wait(30)
    try:
        result = rollups.rollup_drain(wait=False)
    finally:
        release.set()
        _join(holder)

    assert result.busy and result.events == 0
    assert RollupInbox.objects.count() == 10


# --- the proof -----------------------------------------------------------------------------------

ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu"]
# Around New York's fall-back day (2024-11-03 has 25 hours).
WINDOW_START = utc(2024, 11, 1, 12)
WINDOW_HOURS = 96


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("partitions", [1, 2], ids=["one-partition", "two-partitions"])
def test_rollups_equal_raw_aggregates_after_concurrent_ingestion_corrections_and_drains(
    partitions,
):
    """Two drain threads: taking turns on the same accounts (one partition), or side by side on
    their own accounts (two partitions)."""
    rng = random.Random(20241103)
    accounts = [
        AccountFactory(external_id=f"proof-{i}", timezone=zone) for i, zone in enumerate(ZONES * 2)
    ]
    meters = [
        MeterFactory(code="calls", dimensions=["endpoint", "region"]),
        MeterFactory(code="bytes", aggregation=A.SUM, value_property="n", dimensions=["region"]),
        MeterFactory(code="peak", aggregation=A.MAX, value_property="n"),
        MeterFactory(code="seats", aggregation=A.LATEST, value_property="n"),
        MeterFactory(
            code="users", aggregation=A.UNIQUE_COUNT, value_property="user", dimensions=["plan"]
        ),
    ]
    ingesting = threading.Event()
    ingesting.set()
    accepted: list[int] = []

    def item(thread: int, n: int) -> dict:
        meter = rng.choice(meters)
        occurred = WINDOW_START + timedelta(seconds=rng.randrange(WINDOW_HOURS * 3600))
        properties = {
            "endpoint": rng.choice(["/a", "/b", "/c"]),
            "region": rng.choice(["eu", "us", "ap", "sa"]),
            "plan": rng.choice(["free", "pro"]),
            "n": str(Decimal(rng.randrange(1, 10**6)) / 1000),
            "user": f"user-{rng.randrange(40)}",
        }
        if rng.random() < 0.05:
            del properties["region"]  # a missing dimension groups under ""
        return {
            "transaction_id": f"t{thread}-{n}",
            "external_customer_id": rng.choice(accounts).external_id,
            "code": meter.code,
            "timestamp": occurred.isoformat(),
            "properties": properties,
        }

    def ingest(thread: int):
        n = 0
        for _ in range(12):
            batch = [item(thread, n + i) for i in range(rng.randrange(10, 40))]
            n += len(batch)
            result = events_ingest(items=batch, fmt="lago")
            accepted.append(sum(1 for r in result.results if r.status == "accepted"))
            # A client retry of the same batch: all duplicates, nothing stored twice.
            retry = events_ingest(items=batch, fmt="lago")
            assert all(r.status == "duplicate" for r in retry.results)

    def correct():
        while ingesting.is_set():
            candidates = list(
                UsageEvent.objects.filter(corrections__isnull=True)
                .select_related("meter")
                .order_by("?")[:3]
            )
            for original in candidates:
                aggregation = original.meter.aggregation
                kwargs: dict = {"value": None}
                if aggregation == A.UNIQUE_COUNT:
                    kwargs["unique_value"] = rng.choice(["", "user-fixed"])
                elif aggregation != A.COUNT and rng.random() < 0.7:
                    kwargs["value"] = Decimal(rng.randrange(1, 999)) / 10
                try:
                    usage_event_correct(event=original, reason="proof", **kwargs)
                except CorrectionError:
                    pass

    def drain(k: int):
        while ingesting.is_set():
            rollups.rollup_drain(
                batch_size=rng.randrange(5, 60), partition=k % partitions, partitions=partitions
            )

    ingesters = [_in_thread(ingest, t) for t in range(3)]
    others = [_in_thread(correct), _in_thread(drain, 0), _in_thread(drain, 1)]
    _join(*ingesters)
    ingesting.clear()
    _join(*others)
    rollups.rollup_drain()

    stored = UsageEvent.objects.count()
    corrections = UsageEvent.objects.filter(kind=UsageEvent.Kind.CORRECTION).count()
    assert stored == sum(accepted) + corrections
    assert corrections > 0
    assert not RollupInbox.objects.exists()
    # Every stored event, corrections and late commits included, was fed on exactly once.
    fed = sorted(RolledUpEvent.objects.values_list("event_id", flat=True))
    assert fed == sorted(UsageEvent.objects.values_list("pk", flat=True))
    compared = assert_rollups_match_sql()
    assert compared > 500
    assert assert_rollups_match_python() > 500

    # Range totals: unique_count is distinct over the range, max/latest combine across days.
    effective = effective_events()
    first, end = date(2024, 11, 1), date(2024, 11, 6)
    for account in accounts:
        mine = [e for e in effective if e.account_id == account.pk]
        users = [e for e in mine if e.meter.code == "users"]
        peak = [e.value for e in mine if e.meter.code == "peak" and e.value is not None]
        seats = [e for e in mine if e.meter.code == "seats" and e.value is not None]
        totals = {
            code: usage_total(
                account=account,
                meter=next(m for m in meters if m.code == code),
                start=first,
                end=end,
            )
            for code in ("users", "peak", "seats")
        }
        assert totals["users"] == len({e.unique_value for e in users if e.unique_value})
        assert totals["peak"] == (max(peak) if peak else None)
        last = max(seats, key=lambda e: (e.occurred_at, e.pk)) if seats else None
        assert totals["seats"] == (last.value if last else None)


# --- drains side by side, by account -------------------------------------------------------------


def _accounts_in_both_partitions():
    """Two accounts whose ids fall in partition 0 and partition 1 of 2 (even and odd slots)."""
    first = AccountFactory(timezone="Asia/Kolkata")
    second = AccountFactory(timezone="America/New_York")
    if first.pk % 2 == second.pk % 2:
        second = AccountFactory(timezone="America/New_York")
    return sorted([first, second], key=lambda a: a.pk % 2)


def _events_of(acct, meter, n: int):
    return insert(
        *(
            event(
                acct,
                meter,
                utc(2024, 3, 9, 20) + timedelta(minutes=11 * i),
                f"{i}.5",
                properties={"region": f"r{i % 3}"},
            )
            for i in range(n)
        )
    )


@pytest.mark.django_db(transaction=True)
def test_a_partition_drains_only_its_own_accounts():
    even, odd = _accounts_in_both_partitions()
    spend = MeterFactory(aggregation=A.SUM, value_property="bytes", dimensions=["region"])
    _events_of(even, spend, 20)
    odd_events = _events_of(odd, spend, 15)

    result = rollups.rollup_drain(partition=0, partitions=2)

    assert result.events == 20
    assert not RollupDaily.objects.filter(account=odd).exists()
    assert RollupDaily.objects.filter(account=even).exists()
    assert sorted(RollupInbox.objects.values_list("event_id", flat=True)) == sorted(
        e.pk for e in odd_events
    )
    assert rollups.rollup_drain(partition=1, partitions=2).events == 15
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    assert_rollups_match_python()


@pytest.mark.django_db(transaction=True)
def test_drains_of_two_partitions_run_side_by_side_and_a_third_waits_its_turn(monkeypatch):
    even, odd = _accounts_in_both_partitions()
    spend = MeterFactory(aggregation=A.SUM, value_property="bytes", dimensions=["region"])
    _events_of(even, spend, 30)
    _events_of(odd, spend, 25)
    merge = rollups._merge_additive
    inside, release = threading.Event(), threading.Event()
    slow_thread: list[int] = []

    def merge_slowly(cursor):
        merge(cursor)
        if threading.get_ident() in slow_thread:
            inside.set()
            assert release.wait(30)

    monkeypatch.setattr(rollups, "_merge_additive", merge_slowly)
    results: dict[str, rollups.DrainResult] = {}

    def drain_partition_0():
        slow_thread.append(threading.get_ident())
        results["0"] = rollups.rollup_drain(partition=0, partitions=2)

    holder = _in_thread(drain_partition_0)
    try:
        assert inside.wait(30), "partition 0 never reached its merge"
        # Partition 1 drains completely while partition 0 holds its transaction open...
        side = rollups.rollup_drain(partition=1, partitions=2, wait=False)
        assert side.events == 25 and not side.busy
        # ...while another run of partition 0 (or of every account) finds it busy.
        assert rollups.rollup_drain(partition=0, partitions=2, wait=False).busy
        whole = rollups.rollup_drain(wait=False)
        assert whole.busy and whole.events == 0
    finally:
        release.set()
        _join(holder)

    assert results["0"].events == 30
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    assert_rollups_match_python()


@pytest.mark.django_db(transaction=True)
def test_drain_in_parallel_threads_sums_the_partitions():
    even, odd = _accounts_in_both_partitions()
    spend = MeterFactory(aggregation=A.SUM, value_property="bytes", dimensions=["region"])
    _events_of(even, spend, 40)
    _events_of(odd, spend, 35)
    seen: list[int] = []

    result = rollups.rollup_drain_parallel(workers=2, batch_size=10, progress=seen.append)

    assert result.events == 75 == sum(seen)
    assert result.batches >= 8
    assert not RollupInbox.objects.exists()
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_partitions_are_validated():
    with pytest.raises(ValueError, match="partitions must be between 1 and 16"):
        rollups.drain_slots(0, 17)
    with pytest.raises(ValueError, match="partition must be between 0 and 1"):
        rollups.drain_slots(2, 2)
    assert rollups.drain_slots(1, 3) == [1, 4, 7, 10, 13]
    covered = sorted(slot for k in range(5) for slot in rollups.drain_slots(k, 5))
    assert covered == list(range(16))
