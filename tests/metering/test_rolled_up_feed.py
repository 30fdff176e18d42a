"""The rolled-up feed: the rollup drain hands each event on once, in its own transaction, and a
consumer claims it once (metering.models.RolledUpEvent, metering.services.rolled_up_feed)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction

from metering.models import Meter, RolledUpEvent, RollupDaily, RollupInbox, UsageEvent
from metering.services import rollups
from metering.services.rolled_up_feed import rolled_up_events_claim, rolled_up_feed_count
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import assert_rollups_match_sql, event, insert, utc

A = Meter.Aggregation


def _fed() -> list[int]:
    return sorted(RolledUpEvent.objects.values_list("event_id", flat=True))


def _events(n: int, *, account=None, meter=None) -> list[UsageEvent]:
    account = account or AccountFactory(timezone="Asia/Kathmandu")
    meter = meter or MeterFactory(aggregation=A.SUM, value_property="n", dimensions=["region"])
    t = utc(2024, 5, 1, 10)
    return insert(
        *(
            event(
                account, meter, t + timedelta(minutes=7 * i), f"{i}.25", properties={"region": "eu"}
            )
            for i in range(n)
        )
    )


@pytest.mark.django_db
def test_ingestion_writes_the_rollup_inbox_only_and_the_drain_moves_events_to_the_feed():
    events = _events(12)
    assert RollupInbox.objects.count() == 12
    assert not RolledUpEvent.objects.exists()

    assert rollups.rollup_drain(batch_size=5).events == 12

    assert not RollupInbox.objects.exists()
    assert _fed() == sorted(e.pk for e in events)
    assert set(RolledUpEvent.objects.values_list("account_id", flat=True)) == {events[0].account_id}


@pytest.mark.django_db
def test_a_claim_takes_each_fed_event_once_and_a_rolled_back_claim_puts_it_back():
    events = _events(7)
    rollups.rollup_drain()

    with transaction.atomic():
        first = rolled_up_events_claim(limit=4)
        assert len(first) == 4 and rolled_up_feed_count() == 3
        transaction.set_rollback(True)
    assert rolled_up_feed_count() == 7

    with transaction.atomic():
        taken = rolled_up_events_claim(limit=4) + rolled_up_events_claim(limit=4)
    assert sorted(taken) == sorted(e.pk for e in events)
    assert rolled_up_events_claim(limit=4) == []


@pytest.mark.django_db(transaction=True)
def test_a_drain_rolled_back_leaves_both_the_inbox_and_the_feed_unchanged(monkeypatch):
    events = _events(20)
    _events(5)  # a second account, drained earlier: its feed rows must stay as they are
    rollups.rollup_drain()
    before = _fed()
    events += _events(20, account=events[0].account, meter=events[0].meter)
    inbox_before = sorted(RollupInbox.objects.values_list("event_id", flat=True))
    merge = rollups._merge_additive
    fed_inside: list[int] = []

    def merge_then_crash(cursor):
        merge(cursor)
        cursor.execute("SELECT count(*) FROM metering_rolledupevent")
        fed_inside.append(cursor.fetchone()[0])
        raise RuntimeError("worker killed")

    monkeypatch.setattr(rollups, "_merge_additive", merge_then_crash)
    with pytest.raises(RuntimeError, match="worker killed"):
        rollups.rollup_drain(batch_size=1000)

    # Inside the failed transaction the batch had reached the feed...
    assert fed_inside == [len(before) + 20]
    # ...and the rollback took it out again, with the inbox rows back.
    assert _fed() == before
    assert sorted(RollupInbox.objects.values_list("event_id", flat=True)) == inbox_before

    monkeypatch.setattr(rollups, "_merge_additive", merge)
    assert rollups.rollup_drain().events == 20
    assert _fed() == sorted(before + inbox_before)
    assert_rollups_match_sql()


@pytest.mark.django_db(transaction=True)
def test_events_committed_late_are_fed_exactly_once():
    """An ingest transaction that commits after drains (and claims) ran, with a lower event id
    than events already fed: no watermark, so it is fed by the next drain, once."""
    account = AccountFactory()
    meter = MeterFactory(aggregation=A.SUM, value_property="n")
    inserted, commit = threading.Event(), threading.Event()
    late: list[UsageEvent] = []
    errors: list[BaseException] = []

    def slow_ingest():
        try:
            with transaction.atomic():
                late.extend(_events(6, account=account, meter=meter))
                inserted.set()
                assert commit.wait(30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_ingest)
    thread.start()
    assert inserted.wait(30)
    try:
        early = _events(9, account=account, meter=meter)  # higher ids, committed first
        assert rollups.rollup_drain(batch_size=4).events == 9
        with transaction.atomic():
            claimed = rolled_up_events_claim(limit=100)
        assert sorted(claimed) == sorted(e.pk for e in early)
        assert min(claimed) > max(e.pk for e in late)
    finally:
        commit.set()
        thread.join(30)
    assert not errors and len(late) == 6

    assert rollups.rollup_drain(batch_size=4).events == 6
    assert rollups.rollup_drain().events == 0
    with transaction.atomic():
        claimed_late = rolled_up_events_claim(limit=100)
    assert sorted(claimed_late) == sorted(e.pk for e in late)
    assert not RolledUpEvent.objects.exists() and not RollupInbox.objects.exists()
    assert sum(r.count for r in RollupDaily.objects.filter(dim_key="")) == 15


@pytest.mark.django_db(transaction=True)
def test_two_claimers_at_once_take_disjoint_events():
    events = _events(40)
    rollups.rollup_drain()
    taken: list[list[int]] = [[], []]
    first_in, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def claim_and_hold():
        try:
            with transaction.atomic():
                taken[0] = rolled_up_events_claim(limit=25)
                first_in.set()
                assert release.wait(30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=claim_and_hold)
    holder.start()
    assert first_in.wait(30)
    try:
        with transaction.atomic():
            taken[1] = rolled_up_events_claim(limit=25)  # SKIP LOCKED: the other 15, no wait
    finally:
        release.set()
        holder.join(30)
    assert not errors
    assert len(taken[0]) == 25 and len(taken[1]) == 15
    assert sorted(taken[0] + taken[1]) == sorted(e.pk for e in events)
