"""Rollups: buckets, the five aggregations, corrections, late events, time zones, rebuilds."""

from __future__ import annotations

import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from metering.models import (
    Meter,
    RollupCheck,
    RollupDaily,
    RollupHourly,
    RollupInbox,
    UsageEvent,
)
from metering.rollup_selectors import usage_total
from metering.services import rollups
from metering.services.accounts import account_upsert
from metering.services.corrections import CorrectionError, usage_event_correct
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import (
    assert_rollups_match_python,
    assert_rollups_match_sql,
    distinct_values,
    event,
    insert,
    utc,
)

pytestmark = pytest.mark.django_db

A = Meter.Aggregation


def daily(account, meter, day, dim_key="", dim_value="") -> RollupDaily:
    return RollupDaily.objects.get(
        account=account, meter=meter, day=day, dim_key=dim_key, dim_value=dim_value
    )


def hourly(account, meter, hour, dim_key="", dim_value="") -> RollupHourly:
    return RollupHourly.objects.get(
        account=account, meter=meter, hour=hour, dim_key=dim_key, dim_value=dim_value
    )


@pytest.fixture
def meters():
    return {
        A.COUNT: MeterFactory(code="calls", dimensions=["region"]),
        A.SUM: MeterFactory(
            code="bytes", aggregation=A.SUM, value_property="bytes", dimensions=["region"]
        ),
        A.MAX: MeterFactory(code="peak", aggregation=A.MAX, value_property="gb"),
        A.LATEST: MeterFactory(code="seats", aggregation=A.LATEST, value_property="seats"),
        A.UNIQUE_COUNT: MeterFactory(
            code="users", aggregation=A.UNIQUE_COUNT, value_property="user", dimensions=["plan"]
        ),
    }


# --- the five aggregations -----------------------------------------------------------------------


def test_drain_rolls_every_aggregation_into_hourly_and_daily_rows(meters):
    acct = AccountFactory(timezone="UTC")
    t = utc(2024, 5, 1, 10, 15)
    insert(
        event(acct, meters[A.COUNT], t, properties={"region": "eu"}),
        event(acct, meters[A.COUNT], t + timedelta(minutes=50), properties={"region": "us"}),
        event(acct, meters[A.SUM], t, "1.000000000001", properties={"region": "eu"}),
        event(acct, meters[A.SUM], t, "2.5", properties={"region": "eu"}),
        event(acct, meters[A.MAX], t, "7"),
        event(acct, meters[A.MAX], t + timedelta(hours=3), "3"),
        event(acct, meters[A.LATEST], t, "10"),
        event(acct, meters[A.LATEST], t + timedelta(minutes=1), "4"),
        event(acct, meters[A.UNIQUE_COUNT], t, unique="alice", properties={"plan": "pro"}),
        event(acct, meters[A.UNIQUE_COUNT], t, unique="bob", properties={"plan": "free"}),
        event(acct, meters[A.UNIQUE_COUNT], t, unique="alice", properties={"plan": "pro"}),
    )

    result = rollups.rollup_drain()

    assert result.events == 11
    assert not RollupInbox.objects.exists()
    day = date(2024, 5, 1)
    assert daily(acct, meters[A.COUNT], day).count == 2
    assert hourly(acct, meters[A.COUNT], utc(2024, 5, 1, 10)).count == 1
    assert hourly(acct, meters[A.COUNT], utc(2024, 5, 1, 11)).count == 1
    assert daily(acct, meters[A.COUNT], day, "region", "us").count == 1
    assert daily(acct, meters[A.SUM], day).sum == Decimal("3.500000000001")
    assert daily(acct, meters[A.SUM], day, "region", "eu").sum == Decimal("3.500000000001")
    assert daily(acct, meters[A.MAX], day).max == Decimal(7)
    assert hourly(acct, meters[A.MAX], utc(2024, 5, 1, 13)).max == Decimal(3)
    latest = daily(acct, meters[A.LATEST], day)
    assert (latest.latest_value, latest.latest_at) == (Decimal(4), t + timedelta(minutes=1))
    assert daily(acct, meters[A.UNIQUE_COUNT], day).unique_count == 2
    assert daily(acct, meters[A.UNIQUE_COUNT], day, "plan", "pro").unique_count == 1
    assert daily(acct, meters[A.UNIQUE_COUNT], day).count == 0
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_batches_combine_max_latest_and_unique_exactly_in_any_order(meters):
    acct = AccountFactory(timezone="Europe/Berlin")
    t = utc(2024, 5, 1, 8)
    events = []
    for i in range(40):
        value = Decimal((i * 37) % 23) + Decimal("0.25")
        events.append(event(acct, meters[A.MAX], t + timedelta(minutes=i * 7), value))
        events.append(event(acct, meters[A.LATEST], t + timedelta(minutes=(i * 13) % 300), value))
        events.append(
            event(
                acct,
                meters[A.UNIQUE_COUNT],
                t + timedelta(minutes=i * 11),
                unique=f"u{i % 9}",
                properties={"plan": f"p{i % 2}"},
            )
        )
    # Reverse order: later events get lower ids, so batches see time going backwards.
    insert(*reversed(events))

    result = rollups.rollup_drain(batch_size=7)

    assert result.batches >= 17
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_latest_breaks_a_tie_on_time_by_the_higher_event_id(meters):
    acct = AccountFactory()
    t = utc(2024, 5, 1, 8)
    first, second = insert(
        event(acct, meters[A.LATEST], t, "5"), event(acct, meters[A.LATEST], t, "3")
    )
    rollups.rollup_drain(batch_size=1)

    row = daily(acct, meters[A.LATEST], date(2024, 5, 1))
    assert (row.latest_value, row.latest_event_id) == (Decimal(3), second.pk)
    assert second.pk > first.pk


# --- time zones ----------------------------------------------------------------------------------


def test_half_and_quarter_hour_zones_split_days_exactly(meters):
    kolkata = AccountFactory(timezone="Asia/Kolkata")
    kathmandu = AccountFactory(timezone="Asia/Kathmandu")
    calls = meters[A.COUNT]
    insert(
        event(kolkata, calls, utc(2024, 1, 1, 18, 29, 59)),
        event(kolkata, calls, utc(2024, 1, 1, 18, 30)),
        event(kathmandu, calls, utc(2024, 1, 1, 18, 14, 59)),
        event(kathmandu, calls, utc(2024, 1, 1, 18, 15)),
        event(kathmandu, calls, utc(2024, 1, 1, 18, 44)),
    )
    rollups.rollup_drain()

    assert daily(kolkata, calls, date(2024, 1, 1)).count == 1
    assert daily(kolkata, calls, date(2024, 1, 2)).count == 1
    assert daily(kathmandu, calls, date(2024, 1, 1)).count == 1
    assert daily(kathmandu, calls, date(2024, 1, 2)).count == 2
    # The UTC hour 18:00 holds events of two local days, whole.
    assert hourly(kathmandu, calls, utc(2024, 1, 1, 18)).count == 3
    assert_rollups_match_python()


@pytest.mark.parametrize(
    ("day", "hours"), [(date(2024, 3, 10), 23), (date(2024, 11, 3), 25)], ids=["23h", "25h"]
)
def test_dst_days_hold_every_hour_of_the_local_day(meters, day, hours):
    acct = AccountFactory(timezone="America/New_York")
    calls = meters[A.COUNT]
    from metering.periods import day_bounds_utc

    start, end = day_bounds_utc(day, "America/New_York")
    instants = [start + timedelta(minutes=30 + 60 * h) for h in range(hours)]
    insert(
        *(event(acct, calls, t) for t in instants),
        event(acct, calls, start - timedelta(seconds=1)),
        event(acct, calls, end),
    )
    rollups.rollup_drain()

    assert daily(acct, calls, day).count == hours
    assert daily(acct, calls, day - timedelta(days=1)).count == 1
    assert daily(acct, calls, day + timedelta(days=1)).count == 1
    assert RollupHourly.objects.filter(account=acct, dim_key="").count() == hours + 2
    assert_rollups_match_python()


def test_changing_the_time_zone_rebuilds_daily_rollups(meters, django_capture_on_commit_callbacks):
    acct = AccountFactory(external_id="tz-change", timezone="UTC")
    calls = meters[A.COUNT]
    insert(event(acct, calls, utc(2024, 1, 1, 20)), event(acct, calls, utc(2024, 1, 2, 1)))
    rollups.rollup_drain()
    assert daily(acct, calls, date(2024, 1, 1)).count == 1

    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id="tz-change", timezone="Asia/Kolkata")

    # 20:00 UTC is 01:30 on Jan 2 in Kolkata; 01:00 UTC is 06:30 on Jan 2.
    assert not RollupDaily.objects.filter(account=acct, day=date(2024, 1, 1)).exists()
    assert daily(acct, calls, date(2024, 1, 2)).count == 2
    assert hourly(acct, calls, utc(2024, 1, 1, 20)).count == 1
    assert_rollups_match_python()


def test_a_time_zone_change_queues_the_rebuild_and_the_task_does_it_safely_twice(
    meters, django_capture_on_commit_callbacks, monkeypatch
):
    from metering import tasks

    queued: list[dict] = []
    monkeypatch.setattr(
        tasks.account_rollups_rebuild, "delay", lambda **kwargs: queued.append(kwargs)
    )
    acct = AccountFactory(external_id="tz-queued", timezone="UTC")
    calls = meters[A.COUNT]
    insert(event(acct, calls, utc(2024, 1, 1, 20)))
    rollups.rollup_drain()

    with django_capture_on_commit_callbacks(execute=True):
        account_upsert(external_id="tz-queued", timezone="Asia/Kolkata")

    # Not rebuilt in the request: the daily row is still the UTC day.
    assert queued == [{"account_id": acct.pk}]
    assert daily(acct, calls, date(2024, 1, 1)).count == 1

    tasks.account_rollups_rebuild.apply(kwargs=queued[0]).get()
    tasks.account_rollups_rebuild.apply(kwargs=queued[0]).get()

    assert not RollupDaily.objects.filter(account=acct, day=date(2024, 1, 1)).exists()
    assert daily(acct, calls, date(2024, 1, 2)).count == 1
    assert_rollups_match_python()


# --- unique counts over ranges -------------------------------------------------------------------


def test_unique_count_over_several_days_counts_distinct_values_not_a_sum(meters):
    acct = AccountFactory(timezone="Asia/Kathmandu")
    users = meters[A.UNIQUE_COUNT]
    for day in range(1, 4):
        insert(
            *(
                event(acct, users, utc(2024, 2, day, 6), unique=name, properties={"plan": "p"})
                for name in ("alice", "bob", f"guest{day}")
            )
        )
    rollups.rollup_drain()

    daily_counts = [daily(acct, users, date(2024, 2, d)).unique_count for d in (1, 2, 3)]
    assert daily_counts == [3, 3, 3]
    total = usage_total(account=acct, meter=users, start=date(2024, 2, 1), end=date(2024, 2, 4))
    assert total == 5
    hourly_total = usage_total(
        account=acct, meter=users, start=utc(2024, 2, 1), end=utc(2024, 2, 4), granularity="hour"
    )
    assert hourly_total == 5


# --- late events and corrections -----------------------------------------------------------------


def test_a_late_event_lands_in_its_already_rolled_up_bucket(meters):
    acct = AccountFactory()
    spend = meters[A.SUM]
    insert(event(acct, spend, utc(2024, 1, 5, 12), "10", properties={"region": "eu"}))
    rollups.rollup_drain()

    insert(event(acct, spend, utc(2024, 1, 5, 12, 59), "2.5", is_late=True))
    rollups.rollup_drain()

    assert daily(acct, spend, date(2024, 1, 5)).sum == Decimal("12.5")
    assert hourly(acct, spend, utc(2024, 1, 5, 12)).count == 2
    assert daily(acct, spend, date(2024, 1, 5), "region", "").sum == Decimal("2.5")
    assert_rollups_match_python()


def test_a_client_id_shaped_like_an_old_correction_id_cannot_collide_with_a_correction(meters):
    acct = AccountFactory()
    spend = meters[A.SUM]
    original, _ = insert(
        event(acct, spend, utc(2024, 1, 5, 12), "10", transaction_id="t-1"),
        # A client's own id in the old correction format (allowed: not the reserved prefix).
        event(acct, spend, utc(2024, 1, 5, 13), "1", transaction_id="correction:t-1:1"),
    )

    correction = usage_event_correct(event=original, value=Decimal("4"), reason="typo")

    assert correction.transaction_id == "mo:correction:t-1:1"
    assert UsageEvent.objects.filter(account=acct).count() == 3


def test_a_correction_replaces_the_original_in_every_bucket(meters):
    acct = AccountFactory()
    spend = meters[A.SUM]
    original, other = insert(
        event(acct, spend, utc(2024, 1, 5, 12), "10", properties={"region": "eu"}),
        event(acct, spend, utc(2024, 1, 5, 13), "1", properties={"region": "eu"}),
    )
    rollups.rollup_drain()

    correction = usage_event_correct(event=original, value=Decimal("4.5"), reason="double send")
    result = rollups.rollup_drain()

    assert result.recomputed_buckets == 2
    assert correction.kind == UsageEvent.Kind.CORRECTION
    assert correction.transaction_id == f"mo:correction:{original.transaction_id}:1"
    row = daily(acct, spend, date(2024, 1, 5))
    assert (row.count, row.sum, row.max) == (2, Decimal("5.5"), Decimal("4.5"))
    assert daily(acct, spend, date(2024, 1, 5), "region", "eu").sum == Decimal("5.5")
    assert hourly(acct, spend, utc(2024, 1, 5, 12)).sum == Decimal("4.5")
    assert other.pk
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_voiding_the_max_and_latest_event_recomputes_them(meters):
    acct = AccountFactory()
    peak, seats = meters[A.MAX], meters[A.LATEST]
    t = utc(2024, 1, 5, 12)
    big, _small = insert(event(acct, peak, t, "9"), event(acct, peak, t, "4"))
    _old, last = insert(event(acct, seats, t, "3"), event(acct, seats, t + timedelta(hours=2), "8"))
    rollups.rollup_drain()

    usage_event_correct(event=big, value=None, reason="test traffic")
    usage_event_correct(event=last, value=None, reason="test traffic")
    rollups.rollup_drain()

    assert daily(acct, peak, date(2024, 1, 5)).max == Decimal(4)
    assert daily(acct, peak, date(2024, 1, 5)).count == 1
    row = daily(acct, seats, date(2024, 1, 5))
    assert (row.latest_value, row.latest_at) == (Decimal(3), t)
    assert hourly(acct, seats, t + timedelta(hours=2)).latest_value is None
    assert_rollups_match_python()


def test_correcting_a_unique_value_moves_it_out_of_the_distinct_set(meters):
    acct = AccountFactory()
    users = meters[A.UNIQUE_COUNT]
    t = utc(2024, 1, 5, 12)
    typo, _ = insert(
        event(acct, users, t, unique="alcie", properties={"plan": "pro"}),
        event(acct, users, t, unique="alice", properties={"plan": "pro"}),
    )
    rollups.rollup_drain()
    assert daily(acct, users, date(2024, 1, 5)).unique_count == 2

    usage_event_correct(event=typo, value=None, unique_value="alice", reason="typo")
    rollups.rollup_drain()

    assert daily(acct, users, date(2024, 1, 5)).unique_count == 1
    assert {v for *_, v in distinct_values(account_id=acct.pk, meter_id=users.pk, grain="day")} == {
        "alice"
    }
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_a_correction_drained_before_its_original_counts_once(meters):
    acct = AccountFactory()
    spend = meters[A.SUM]
    (original,) = insert(event(acct, spend, utc(2024, 1, 5, 12), "10"))
    usage_event_correct(event=original, value=Decimal(3), reason="wrong unit")
    # Drain only what comes after the original: the correction goes first.
    with transaction.atomic(), connection.cursor() as cursor:
        rollups._lock(cursor, wait=True)
        rollups._begin(cursor)
        count, _, _ = rollups._drain_batch(cursor, after=(acct.pk, original.pk), limit=100)
    assert count == 1
    assert daily(acct, spend, date(2024, 1, 5)).sum == Decimal(3)

    rollups.rollup_drain()

    assert daily(acct, spend, date(2024, 1, 5)).sum == Decimal(3)
    assert daily(acct, spend, date(2024, 1, 5)).count == 1
    assert_rollups_match_python()


def test_an_event_and_its_correction_in_one_batch_count_once(meters):
    acct = AccountFactory()
    calls = meters[A.COUNT]
    (original,) = insert(event(acct, calls, utc(2024, 1, 5, 12), properties={"region": "eu"}))
    usage_event_correct(event=original, value=None, reason="bot traffic")

    rollups.rollup_drain()

    assert daily(acct, calls, date(2024, 1, 5)).count == 0
    assert daily(acct, calls, date(2024, 1, 5), "region", "eu").count == 0
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_an_event_is_corrected_once_and_then_through_its_latest_correction(meters):
    acct = AccountFactory()
    spend = meters[A.SUM]
    (original,) = insert(event(acct, spend, utc(2024, 1, 5, 12), "10"))
    first = usage_event_correct(event=original, value=Decimal(7), reason="first try")

    with pytest.raises(CorrectionError, match="correct the latest correction"):
        usage_event_correct(event=original, value=Decimal(6), reason="again")
    second = usage_event_correct(event=first, value=Decimal(6), reason="second try")
    rollups.rollup_drain()

    assert second.transaction_id == f"mo:correction:{original.transaction_id}:2"
    assert second.properties["_correction"]["reason"] == "second try"
    assert daily(acct, spend, date(2024, 1, 5)).sum == Decimal(6)
    assert_rollups_match_python()


@pytest.mark.parametrize(
    ("aggregation", "value", "unique", "message"),
    [
        (A.COUNT, Decimal(2), "", "count meter counts events"),
        (A.SUM, Decimal("0.0000000000001"), "", "more than 12 decimal places"),
        (A.SUM, Decimal("1e26"), "", "below 10"),
        (A.SUM, None, "x", "takes a number"),
        (A.UNIQUE_COUNT, Decimal(1), "", "takes a unique value"),
    ],
)
def test_a_correction_must_fit_its_meter(meters, aggregation, value, unique, message):
    acct = AccountFactory()
    meter = meters[aggregation]
    (original,) = insert(event(acct, meter, utc(2024, 1, 5), "1", unique="u"))

    with pytest.raises(CorrectionError, match=message):
        usage_event_correct(event=original, value=value, unique_value=unique, reason="r")
    with pytest.raises(CorrectionError, match="Say why"):
        usage_event_correct(event=original, value=None, reason=" ")
    assert not UsageEvent.objects.filter(kind=UsageEvent.Kind.CORRECTION).exists()


# --- dimension cap ------------------------------------------------------------------------------


def test_dimension_values_past_the_cap_fold_into_other(meters, settings):
    settings.ROLLUP_MAX_DIMENSION_VALUES = 3
    acct = AccountFactory()
    spend = meters[A.SUM]
    t = utc(2024, 1, 5, 12)
    insert(
        *(
            event(acct, spend, t + timedelta(minutes=i), str(i + 1), properties={"region": f"r{i}"})
            for i in range(6)
        )
    )
    rollups.rollup_drain(batch_size=2)
    insert(event(acct, spend, t, "100", properties={"region": "r1"}))
    rollups.rollup_drain()

    rows = {
        r.dim_value: r
        for r in RollupDaily.objects.filter(account=acct, meter=spend, dim_key="region")
    }
    assert set(rows) == {"r0", "r1", "r2", "other"}
    assert rows["other"].folded and not rows["r0"].folded
    assert rows["other"].sum == Decimal(4 + 5 + 6)
    assert rows["r1"].sum == Decimal(102)
    assert sum(r.sum for r in rows.values()) == daily(acct, spend, date(2024, 1, 5)).sum
    hourly_other = hourly(acct, spend, utc(2024, 1, 5, 12), "region", "other")
    assert (hourly_other.sum, hourly_other.folded) == (Decimal(15), True)
    assert_rollups_match_sql()


# --- rebuild, self-check, command ---------------------------------------------------------------


def _corrupt(acct, meter):
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE metering_rollupdaily SET count = count + 5, sum = sum + 1"
            " WHERE account_id = %s AND meter_id = %s",
            [acct.pk, meter.pk],
        )
        cursor.execute("DELETE FROM metering_rolluphourlydistinct WHERE account_id = %s", [acct.pk])
        cursor.execute(
            "INSERT INTO metering_rolluphourly (account_id, meter_id, dim_key, dim_value, hour,"
            " count, sum, unique_count, folded) VALUES (%s, %s, '', '', %s, 1, 1, 0, false)",
            [acct.pk, meter.pk, utc(2024, 1, 6, 3)],
        )


def test_rebuild_since_a_day_recomputes_from_raw_events(meters):
    acct = AccountFactory(timezone="America/New_York")
    spend, users = meters[A.SUM], meters[A.UNIQUE_COUNT]
    insert(
        event(acct, spend, utc(2024, 1, 5, 12), "2", properties={"region": "eu"}),
        event(acct, users, utc(2024, 1, 5, 12), unique="u1"),
    )
    rollups.rollup_drain()
    _corrupt(acct, spend)

    rebuilt = rollups.rollups_rebuild(since=date(2024, 1, 1))

    assert rebuilt >= 1
    assert daily(acct, spend, date(2024, 1, 5)).count == 1
    assert_rollups_match_sql()
    assert_rollups_match_python()


def test_self_check_finds_drift_repairs_it_and_records_it(meters):
    acct = AccountFactory(timezone="Asia/Kolkata")
    spend, users = meters[A.SUM], meters[A.UNIQUE_COUNT]
    insert(
        event(acct, spend, utc(2024, 1, 5, 12), "2", properties={"region": "eu"}),
        event(acct, users, utc(2024, 1, 5, 12), unique="u1", properties={"plan": "a"}),
    )
    rollups.rollup_drain()
    clean = rollups.rollup_self_check(today=date(2024, 1, 6))
    assert (clean.status, clean.drifted) == (RollupCheck.Status.CLEAN, 0)
    assert clean.buckets_checked == 4

    _corrupt(acct, spend)
    found = rollups.rollup_self_check(today=date(2024, 1, 6))

    assert found.status == RollupCheck.Status.REPAIRED
    # The spend day, the bogus hour and the users' hour whose distinct values went missing.
    assert found.drifted == 3
    assert found.repaired == 3
    drifted = {(d["grain"], d["meter_id"], d["bucket"]) for d in found.details["drifted"]}
    assert drifted == {
        ("day", spend.pk, "2024-01-05"),
        ("hour", spend.pk, "2024-01-06T03:00:00+00:00"),
        ("hour", users.pk, "2024-01-05T12:00:00+00:00"),
    }
    assert found.finished_at is not None
    assert any(d["distinct_values_drifted"] for d in found.details["drifted"])
    assert_rollups_match_sql()
    again = rollups.rollup_self_check(today=date(2024, 1, 6))
    assert again.status == RollupCheck.Status.CLEAN


def test_self_check_leaves_events_still_in_the_inbox_to_the_drain(meters):
    acct = AccountFactory()
    insert(event(acct, meters[A.COUNT], utc(2024, 1, 5, 12)))
    rollups.rollup_drain()
    insert(event(acct, meters[A.COUNT], utc(2024, 1, 5, 13)))

    check = rollups.rollup_self_check(today=date(2024, 1, 6))

    assert check.status == RollupCheck.Status.CLEAN
    assert RollupInbox.objects.count() == 1


def test_rollup_command_drains_rebuilds_and_checks(meters):
    acct = AccountFactory(external_id="cmd")
    insert(*(event(acct, meters[A.COUNT], utc(2024, 1, 5, h)) for h in range(5)))
    out, err = io.StringIO(), io.StringIO()

    call_command("rollup", "--batch-size", "2", stdout=out, stderr=err)
    assert "Rolled up 5 events in 3 batches" in out.getvalue()
    assert "rollup" in err.getvalue()  # the progress bar
    assert daily(acct, meters[A.COUNT], date(2024, 1, 5)).count == 5

    RollupDaily.objects.filter(account=acct).update(count=0)
    out = io.StringIO()
    call_command(
        "rollup", "--rebuild", "--since", "2024-01-01", "--account", "cmd", stdout=out, stderr=err
    )
    assert "Rebuilt the rollups of 1 accounts" in out.getvalue()
    assert daily(acct, meters[A.COUNT], date(2024, 1, 5)).count == 5

    out = io.StringIO()
    call_command("rollup", "--check", stdout=out, stderr=err)
    assert "Self-check No drift" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_rollup_command_drains_with_several_workers():
    accounts = [AccountFactory(), AccountFactory(), AccountFactory()]
    calls = MeterFactory(code="calls")
    insert(*(event(a, calls, utc(2024, 1, 5, h)) for a in accounts for h in range(4)))
    out = io.StringIO()

    call_command("rollup", "--workers", "2", "--batch-size", "3", stdout=out, stderr=io.StringIO())

    assert "Rolled up 12 events in" in out.getvalue()
    assert not RollupInbox.objects.exists()
    for account in accounts:
        assert daily(account, calls, date(2024, 1, 5)).count == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rebuild"], "--rebuild needs --since"),
        (["--rebuild", "--since", "2024-13-01"], "YYYY-MM-DD"),
        (["--rebuild", "--since", "2024-01-01", "--account", "nope"], "Unknown account"),
        (["--since", "2024-01-01"], "go with --rebuild"),
        (["--workers", "0"], "--workers takes 1 to 16"),
        (["--workers", "17"], "--workers takes 1 to 16"),
    ],
)
def test_rollup_command_explains_bad_arguments(args, message):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("rollup", *args, stdout=io.StringIO(), stderr=io.StringIO())
