"""Helpers for the rollup tests: write events directly and compare rollups with the truth.

Two independent truths are used: the SQL definition (`rollup_raw_aggregates`, the one the
self-check uses) and a plain-Python reference below that derives buckets with zoneinfo and
aggregates in Python, sharing no code with the rollup.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from metering.content_hash import event_content_hash
from metering.models import Account, Meter, RollupDailyDistinct, RollupHourlyDistinct, UsageEvent
from metering.rollup_selectors import rollup_raw_aggregates, rollup_stored_rows

_ids = itertools.count(1)
FAR_PAST = date(2000, 1, 1)
FAR_FUTURE = date(2100, 1, 1)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def event(
    account: Account,
    meter: Meter,
    occurred_at: datetime,
    value=None,
    *,
    properties: dict | None = None,
    unique: str = "",
    transaction_id: str | None = None,
    is_late: bool = False,
) -> UsageEvent:
    """An unsaved event whose value follows the meter's rule (count -> 1)."""
    properties = dict(properties or {})
    if meter.aggregation == Meter.Aggregation.COUNT:
        value = Decimal(1)
    elif meter.aggregation == Meter.Aggregation.UNIQUE_COUNT:
        properties.setdefault(meter.value_property, unique)
        value = None
    else:
        value = Decimal(value)
        properties.setdefault(meter.value_property, str(value))
    return UsageEvent(
        account=account,
        meter=meter,
        transaction_id=transaction_id or f"tx-{next(_ids)}",
        occurred_at=occurred_at,
        received_at=occurred_at,
        value=value,
        unique_value=unique,
        properties=properties,
        content_hash=event_content_hash(
            meter_code=meter.code, occurred_at=occurred_at, properties=properties
        ),
        is_late=is_late,
    )


def insert(*events: UsageEvent) -> list[UsageEvent]:
    """Insert events in one statement (the trigger gives each an inbox row)."""
    return UsageEvent.objects.bulk_create(list(events))


def _key(row) -> tuple:
    return (row.account_id, row.meter_id, row.dim_key, row.dim_value, row.bucket)


def _stats(row) -> tuple:
    return (
        row.count,
        row.sum,
        row.max,
        row.latest_value,
        row.latest_at,
        row.latest_event_id,
        row.unique_count,
        row.folded,
    )


EMPTY = (0, Decimal(0), None, None, None, None, 0, False)


def assert_rollups_match_sql(*, account_ids=None, since=FAR_PAST, until=FAR_FUTURE) -> int:
    """Every stored rollup row (hourly and daily, whole meter and per dimension value) equals the
    SQL definition over the raw events, and the other way round. Returns rows compared."""
    compared = 0
    for grain in ("hour", "day"):
        # An all-empty row (e.g. a bucket holding only a void correction) and no row are alike.
        expected = {
            _key(r): _stats(r)
            for r in rollup_raw_aggregates(
                granularity=grain, since=since, until=until, account_ids=account_ids
            )
            if _stats(r) != EMPTY
        }
        stored = {
            _key(r): _stats(r)
            for r in rollup_stored_rows(
                granularity=grain, since=since, until=until, account_ids=account_ids
            )
        }
        missing = {k: v for k, v in expected.items() if stored.get(k) != v}
        extra = {k: v for k, v in stored.items() if k not in expected}
        assert not missing and not extra, (
            f"{grain}: {len(missing)} rows differ, {len(extra)} unexpected; "
            f"e.g. {list(missing.items())[:3]} stored {[stored.get(k) for k in list(missing)[:3]]}"
            f" extra {list(extra.items())[:3]}"
        )
        compared += len(expected)
    return compared


# --- the independent Python reference -----------------------------------------------------------


def effective_events(account_ids=None) -> list[UsageEvent]:
    events = UsageEvent.objects.select_related("account", "meter").order_by("pk")
    if account_ids is not None:
        events = events.filter(account_id__in=account_ids)
    events = list(events)
    corrected = {e.corrects_id for e in UsageEvent.objects.filter(corrects__isnull=False)}
    return [e for e in events if e.pk not in corrected]


def python_reference(account_ids=None) -> dict[tuple, dict]:
    """(account, meter, dim_key, dim_value, grain, bucket) -> the five aggregates, computed in
    Python from the effective events (no dimension folding: use fewer values than the cap)."""
    groups: dict[tuple, list[UsageEvent]] = defaultdict(list)
    for e in effective_events(account_ids):
        hour = e.occurred_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        day = e.occurred_at.astimezone(ZoneInfo(e.account.timezone)).date()
        dims = [("", "")] + [
            (k, "" if e.properties.get(k) is None else str(e.properties.get(k)))
            for k in e.meter.dimensions
        ]
        for dim_key, dim_value in dims:
            groups[(e.account_id, e.meter_id, dim_key, dim_value, "hour", hour)].append(e)
            groups[(e.account_id, e.meter_id, dim_key, dim_value, "day", day)].append(e)
    result = {}
    for key, events in groups.items():
        valued = [e for e in events if e.value is not None]
        if not valued and not any(e.unique_value for e in events):
            continue  # only void corrections: nothing to count, no row needed
        latest = max(valued, key=lambda e: (e.occurred_at, e.pk)) if valued else None
        result[key] = {
            "count": len(valued),
            "sum": sum((e.value for e in valued), Decimal(0)),
            "max": max((e.value for e in valued), default=None),
            "latest_value": latest.value if latest else None,
            "latest_event_id": latest.pk if latest else None,
            "unique_count": len({e.unique_value for e in events if e.unique_value}),
        }
    return result


def assert_rollups_match_python(account_ids=None) -> int:
    reference = python_reference(account_ids)
    stored = {}
    for grain in ("hour", "day"):
        for r in rollup_stored_rows(
            granularity=grain, since=FAR_PAST, until=FAR_FUTURE, account_ids=account_ids
        ):
            stored[(r.account_id, r.meter_id, r.dim_key, r.dim_value, grain, r.bucket)] = {
                "count": r.count,
                "sum": r.sum,
                "max": r.max,
                "latest_value": r.latest_value,
                "latest_event_id": r.latest_event_id,
                "unique_count": r.unique_count,
            }
    wrong = {k: (v, stored.get(k)) for k, v in reference.items() if stored.get(k) != v}
    extra = set(stored) - set(reference)
    assert not wrong and not extra, f"{list(wrong.items())[:3]} extra={list(extra)[:3]}"
    return len(reference)


def distinct_values(*, account_id: int, meter_id: int, grain: str, dim_key: str = "") -> set:
    model = RollupHourlyDistinct if grain == "hour" else RollupDailyDistinct
    bucket = "hour" if grain == "hour" else "day"
    return set(
        model.objects.filter(account_id=account_id, meter_id=meter_id, dim_key=dim_key)
        .values_list(bucket, "dim_value", "value")
        .order_by()
    )
