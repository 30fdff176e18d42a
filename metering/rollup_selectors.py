"""Reading usage from the rollups: series, exact totals and breakdowns by a dimension.

Every read here touches only rollup tables (a bounded number of rows per bucket), never the raw
events, except `rollup_raw_aggregates`, which computes what the rollups should hold from the raw
events (the definition the self-check and the tests compare against).

Values come back as Decimal (count included) or None where there is nothing to report (the
max or latest of an empty bucket). Per aggregation, a bucket's value and a range's total are:

| aggregation  | bucket            | range total                                         |
|--------------|-------------------|-----------------------------------------------------|
| count        | events            | sum of buckets                                      |
| sum          | sum of values     | sum of buckets                                      |
| max          | greatest value    | greatest of buckets                                 |
| latest       | value of the last | value of the bucket row with the greatest           |
|              | event             | (latest_at, latest_event_id)                        |
| unique_count | distinct values   | COUNT(DISTINCT) over the range's distinct values,   |
|              |                   | never a sum of bucket counts                        |

Days are the account's local days (`metering.periods`); hours are UTC hours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from django.db import connection, transaction

from metering import periods
from metering import rollups_sql as q
from metering.models import ROLLUP_OTHER, Account, Meter
from metering.services import rollups as rollup_services

Granularity = Literal["day", "hour"]

# Longest range a series may cover, per granularity (the usage API answers 400 past these).
MAX_POINTS: dict[str, int] = {"day": 400, "hour": 24 * 45}
DEFAULT_TOP = 10
# Events without the grouped property are kept under the dimension value "" (rollups_sql);
# every reader (usage API, admin dashboard) names that group NONE_LABEL.
NONE_LABEL = "(none)"

A = Meter.Aggregation


class UsageRangeError(ValueError):
    """The range is empty, reversed, misaligned or too long for the granularity."""


class UnknownDimension(ValueError):
    """group_by names a property that is not one of the meter's dimensions."""


@dataclass(frozen=True)
class UsagePoint:
    start: datetime  # UTC instant the bucket starts at
    end: datetime  # UTC instant it ends at (exclusive)
    day: date | None  # the local day, for daily series
    value: Decimal | None
    groups: dict[str, Decimal | None] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageSeries:
    account_id: int
    meter_id: int
    meter_code: str
    aggregation: str
    unit: str
    timezone: str
    granularity: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    first_day: date | None  # local days [first_day, end_day) for daily series
    end_day: date | None
    total: Decimal | None
    points: list[UsagePoint]
    group_by: str | None = None
    # Each group's exact total over the range, in display order (top values, then "other").
    group_totals: dict[str, Decimal | None] = field(default_factory=dict)
    # True when, on some day in the range, values past ROLLUP_MAX_DIMENSION_VALUES were folded
    # into "other" by the rollup (as opposed to grouped there for display by `top`).
    folded: bool = False


# --- ranges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Range:
    granularity: str
    start: datetime
    end: datetime
    first_day: date | None
    end_day: date | None
    buckets: list  # dates or hour datetimes

    @property
    def lo(self):
        return self.first_day if self.granularity == "day" else self.start

    @property
    def hi(self):
        return self.end_day if self.granularity == "day" else self.end


def usage_range(
    *, timezone: str, granularity: Granularity, start: date | datetime, end: date | datetime
) -> _Range:
    """Validate and resolve a range. Daily ranges take local dates `[start, end)`; hourly ranges
    take aware datetimes on whole UTC hours `[start, end)` (dates mean UTC midnight)."""
    if granularity == "day":
        if isinstance(start, datetime) or isinstance(end, datetime):
            raise UsageRangeError("A daily range is given as dates in the account's time zone.")
        if end <= start:
            raise UsageRangeError("The range is empty: 'to' must be after 'from'.")
        days = (end - start).days
        if days > MAX_POINTS["day"]:
            raise UsageRangeError(
                f"A daily range covers at most {MAX_POINTS['day']} days; this one has {days}."
            )
        start_utc, end_utc = periods.days_bounds_utc(start, end, timezone)
        return _Range("day", start_utc, end_utc, start, end, list(periods.iter_days(start, end)))
    if granularity != "hour":
        raise UsageRangeError("Granularity is 'day' or 'hour'.")
    start_utc, end_utc = (_as_utc(start), _as_utc(end))
    if periods.hour_floor(start_utc) != start_utc or periods.hour_floor(end_utc) != end_utc:
        raise UsageRangeError("An hourly range starts and ends on whole UTC hours.")
    if end_utc <= start_utc:
        raise UsageRangeError("The range is empty: 'to' must be after 'from'.")
    hours = int((end_utc - start_utc) / periods.HOUR)
    if hours > MAX_POINTS["hour"]:
        raise UsageRangeError(
            f"An hourly range covers at most {MAX_POINTS['hour']} hours; this one has {hours}."
        )
    return _Range(
        "hour", start_utc, end_utc, None, None, list(periods.iter_hours(start_utc, end_utc))
    )


def _as_utc(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise UsageRangeError("Times must carry a UTC offset.")
        return value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


# --- SQL -------------------------------------------------------------------------------------

# Per bucket (and group) combination of stored rows: the five aggregates' merge rules.
_COMBINE = """
    sum(r.count) AS count, sum(r.sum) AS sum, max(r.max) AS max,
    (max(ARRAY[(extract(epoch FROM r.latest_at) * 1000000)::numeric,
               r.latest_event_id::numeric, r.latest_value])
        FILTER (WHERE r.latest_at IS NOT NULL))[3] AS latest_value,
    sum(r.unique_count) AS unique_count,
    bool_or(r.folded) AS folded
"""

_VALUE_COLUMN = {
    A.COUNT: "count",
    A.SUM: "sum",
    A.MAX: "max",
    A.LATEST: "latest_value",
    A.UNIQUE_COUNT: "unique_count",
}


def _tables(granularity: str) -> tuple[str, str, str]:
    return q.table(granularity), q.distinct_table(granularity), granularity


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _bucket_rows(meter: Meter, account_id: int, rng: _Range, dim_key: str) -> dict:
    """bucket -> value (whole meter)."""
    table, _, bucket = _tables(rng.granularity)
    column = _VALUE_COLUMN[meter.aggregation]
    rows = _fetch(
        f"""
        SELECT r.{bucket}, {_COMBINE}
        FROM {table} r
        WHERE r.account_id = %(a)s AND r.meter_id = %(m)s AND r.dim_key = %(k)s
          AND r.{bucket} >= %(lo)s AND r.{bucket} < %(hi)s
        GROUP BY r.{bucket}
        """,
        {"a": account_id, "m": meter.pk, "k": dim_key, "lo": rng.lo, "hi": rng.hi},
    )
    names = ["count", "sum", "max", "latest_value", "unique_count", "folded"]
    return {row[0]: dict(zip(names, row[1:], strict=True))[column] for row in rows}


def _series_and_total(meter: Meter, account_id: int, rng: _Range) -> tuple[dict, Decimal | None]:
    """(bucket -> value, the range's exact total) of the whole meter: one statement (GROUPING
    SETS) except for unique_count, whose total is a distinct count over the distinct table."""
    if meter.aggregation == A.UNIQUE_COUNT:
        return _bucket_rows(meter, account_id, rng, ""), _total(meter, account_id, rng)
    table, _, bucket = _tables(rng.granularity)
    column = _VALUE_COLUMN[meter.aggregation]
    rows = _fetch(
        f"""
        SELECT b, whole, {column} FROM (
            SELECT r.{bucket} AS b, grouping(r.{bucket}) = 1 AS whole, {_COMBINE}
            FROM {table} r
            WHERE r.account_id = %(a)s AND r.meter_id = %(m)s AND r.dim_key = ''
              AND r.{bucket} >= %(lo)s AND r.{bucket} < %(hi)s
            GROUP BY GROUPING SETS ((r.{bucket}), ())) x
        """,
        {"a": account_id, "m": meter.pk, "lo": rng.lo, "hi": rng.hi},
    )
    values = {b: value for b, whole, value in rows if not whole}
    total = next(value for _b, whole, value in rows if whole)
    return values, _as_decimal(meter, total)


def _total(meter: Meter, account_id: int, rng: _Range) -> Decimal | None:
    table, distinct, bucket = _tables(rng.granularity)
    params = {"a": account_id, "m": meter.pk, "lo": rng.lo, "hi": rng.hi}
    where = (
        f"account_id = %(a)s AND meter_id = %(m)s AND dim_key = '' AND {bucket} >= %(lo)s"
        f" AND {bucket} < %(hi)s"
    )
    if meter.aggregation == A.UNIQUE_COUNT:
        sql = f"SELECT count(DISTINCT value) FROM {distinct} WHERE {where}"
    else:
        column = _VALUE_COLUMN[meter.aggregation]
        sql = f"SELECT {column} FROM (SELECT {_COMBINE} FROM {table} r WHERE {where}) t"
    value = _fetch(sql, params)[0][0]
    return _as_decimal(meter, value)


def _as_decimal(meter: Meter, value) -> Decimal | None:
    if value is None:
        return Decimal(0) if meter.aggregation in (A.COUNT, A.SUM, A.UNIQUE_COUNT) else None
    return Decimal(value)


def _groups(
    meter: Meter, account_id: int, rng: _Range, dim_key: str, top: int | None
) -> tuple[dict, dict[str, Decimal | None], bool]:
    """(bucket -> {group: value}, group totals in display order, folded).

    One statement: the range's rows of the dimension are read once (a materialised CTE, which a
    whale's month makes thousands of rows), ranked, and aggregated per bucket and group and per
    group over the range together (GROUPING SETS).
    """
    table, distinct, bucket = _tables(rng.granularity)
    params = {"a": account_id, "m": meter.pk, "k": dim_key, "lo": rng.lo, "hi": rng.hi}
    params.update(other=ROLLUP_OTHER, top=top if top is not None else 2**31 - 1)
    where = (
        f"account_id = %(a)s AND meter_id = %(m)s AND dim_key = %(k)s AND {bucket} >= %(lo)s"
        f" AND {bucket} < %(hi)s"
    )
    unique = meter.aggregation == A.UNIQUE_COUNT
    column = _VALUE_COLUMN[meter.aggregation]
    # Rank the stored values by their total over the range; the top ones are shown by name
    # and the rest (with anything the rollup folded) under "other".
    if unique:
        ranked = """
            SELECT dim_value, count(DISTINCT value) AS total
            FROM picked WHERE dim_value <> %(other)s GROUP BY dim_value"""
        combine, value_sql = "count(DISTINCT r.value) AS v", "v"
        # Distinct rows carry no flag: the rollup rows of the same range say whether it folded.
        folded_sql = f"(SELECT coalesce(bool_or(folded), false) FROM {table} WHERE {where})"
    else:
        ranked = f"""
            SELECT dim_value, {column} AS total
            FROM (SELECT r.dim_value, {_COMBINE} FROM picked r
                  WHERE r.dim_value <> %(other)s GROUP BY r.dim_value) t"""
        combine, value_sql, folded_sql = _COMBINE, column, "folded"
    sql = f"""
        WITH picked AS MATERIALIZED (SELECT * FROM {distinct if unique else table} WHERE {where}),
        ranked AS ({ranked}),
        top AS (SELECT dim_value FROM ranked
                ORDER BY total DESC NULLS LAST, dim_value LIMIT %(top)s)
        SELECT b, g, {value_sql}, {folded_sql}, whole FROM (
            SELECT r.{bucket} AS b, r.g, grouping(r.{bucket}) = 1 AS whole, {combine}
            FROM (SELECT p.*,
                         CASE WHEN t.dim_value IS NOT NULL THEN p.dim_value ELSE %(other)s END AS g
                  FROM picked p LEFT JOIN top t ON t.dim_value = p.dim_value) r
            GROUP BY GROUPING SETS ((r.{bucket}, r.g), (r.g))) x
    """
    by_bucket: dict = {}
    group_totals: dict[str, Decimal | None] = {}
    any_folded = False
    for bucket_value, group_name, group_value, row_folded, whole in _fetch(sql, params):
        if whole:
            group_totals[group_name] = _as_decimal(meter, group_value)
            any_folded = any_folded or bool(row_folded)
        else:
            by_bucket.setdefault(bucket_value, {})[group_name] = _as_decimal(meter, group_value)
    if unique and not group_totals:  # no distinct rows to carry the flag
        any_folded = bool(_fetch(f"SELECT {folded_sql}", params)[0][0])

    def display_order(g: str) -> tuple:
        group_value = group_totals[g]
        return (g == ROLLUP_OTHER, group_value is None, -(group_value or 0), g)

    ordered = sorted(group_totals, key=display_order)
    return by_bucket, {g: group_totals[g] for g in ordered}, any_folded


def group_label(dim_value: str) -> str:
    """How a stored dimension value is shown: "" (the property was missing) as "(none)"."""
    return NONE_LABEL if dim_value == "" else dim_value


def _empty(meter: Meter) -> Decimal | None:
    return _as_decimal(meter, None)


def usage_series(
    *,
    account: Account,
    meter: Meter,
    start: date | datetime,
    end: date | datetime,
    granularity: Granularity = "day",
    group_by: str | None = None,
    top: int | None = None,
) -> UsageSeries:
    """An account's usage of one meter over `[start, end)`, one point per bucket (empty buckets
    included), with the exact total and, when `group_by` names one of the meter's dimensions,
    each point's breakdown by its values (the `top` largest over the range by name, everything
    else under "other"; all stored values when `top` is None).

    Reads only rollups: 1 query (2 for unique_count), one more with group_by. Raises
    UsageRangeError and UnknownDimension for bad input.
    """
    rng = usage_range(timezone=account.timezone, granularity=granularity, start=start, end=end)
    if group_by is not None and group_by not in (meter.dimensions or []):
        known = ", ".join(meter.dimensions or []) or "none"
        raise UnknownDimension(
            f"Meter {meter.code} has no dimension {group_by!r} (its dimensions: {known})."
        )
    values, total = _series_and_total(meter, account.pk, rng)
    by_bucket: dict = {}
    group_totals: dict[str, Decimal | None] = {}
    folded = False
    if group_by is not None:
        by_bucket, group_totals, folded = _groups(meter, account.pk, rng, group_by, top)
    points = []
    empty = _empty(meter)
    if rng.granularity == "day":
        # Each local day ends where the next starts: one zone conversion per day, not two.
        starts = [periods.day_start_utc(day, account.timezone) for day in rng.buckets]
        starts.append(rng.end)
    for index, bucket in enumerate(rng.buckets):
        if rng.granularity == "day":
            start_utc, end_utc = starts[index], starts[index + 1]
            day = bucket
        else:
            start_utc, end_utc, day = bucket, bucket + periods.HOUR, None
        stored = values.get(bucket)
        value = empty if stored is None else _as_decimal(meter, stored)
        groups = dict(by_bucket.get(bucket, {})) if group_by is not None else {}
        points.append(UsagePoint(start_utc, end_utc, day, value, groups))
    return UsageSeries(
        account_id=account.pk,
        meter_id=meter.pk,
        meter_code=meter.code,
        aggregation=meter.aggregation,
        unit=meter.unit,
        timezone=account.timezone,
        granularity=rng.granularity,
        start=rng.start,
        end=rng.end,
        first_day=rng.first_day,
        end_day=rng.end_day,
        total=total,
        points=points,
        group_by=group_by,
        group_totals=group_totals,
        folded=folded,
    )


def usage_total(
    *,
    account: Account,
    meter: Meter,
    start: date | datetime,
    end: date | datetime,
    granularity: Granularity = "day",
) -> Decimal | None:
    """The exact total over `[start, end)` (distinct values over the whole range for
    unique_count). One query."""
    rng = usage_range(timezone=account.timezone, granularity=granularity, start=start, end=end)
    return _total(meter, account.pk, rng)


@dataclass(frozen=True)
class MeterDailyUsage:
    meter: Meter
    days: dict[date, Decimal | None]  # every local day of the range
    total: Decimal | None


def usage_daily_by_meter(
    *, account: Account, first: date, end: date, meters: list[Meter] | None = None
) -> list[MeterDailyUsage]:
    """Daily usage of every meter (or the given ones) of an account over local days
    `[first, end)`, with exact totals: the per-meter view of a billing period. Three queries
    whatever the number of meters."""
    rng = usage_range(timezone=account.timezone, granularity="day", start=first, end=end)
    if meters is None:
        meters = list(Meter.objects.order_by("code"))
    by_id = {m.pk: m for m in meters}
    params = {"a": account.pk, "ids": list(by_id), "lo": first, "hi": end}
    rows = _fetch(
        f"""
        SELECT r.meter_id, r.day, {_COMBINE}
        FROM metering_rollupdaily r
        WHERE r.account_id = %(a)s AND r.meter_id = ANY(%(ids)s) AND r.dim_key = ''
          AND r.day >= %(lo)s AND r.day < %(hi)s
        GROUP BY r.meter_id, r.day
        """,
        params,
    )
    names = ["count", "sum", "max", "latest_value", "unique_count", "folded"]
    per_meter: dict[int, dict[date, dict]] = {}
    for meter_id, day, *stats in rows:
        per_meter.setdefault(meter_id, {})[day] = dict(zip(names, stats, strict=True))
    unique_totals = dict(
        _fetch(
            """
            SELECT meter_id, count(DISTINCT value) FROM metering_rollupdailydistinct
            WHERE account_id = %(a)s AND meter_id = ANY(%(ids)s) AND dim_key = ''
              AND day >= %(lo)s AND day < %(hi)s
            GROUP BY meter_id
            """,
            params,
        )
    )
    result = []
    for meter in meters:
        column = _VALUE_COLUMN[meter.aggregation]
        stored = per_meter.get(meter.pk, {})
        days = {
            day: _as_decimal(meter, stored[day][column]) if day in stored else _empty(meter)
            for day in rng.buckets
        }
        result.append(
            MeterDailyUsage(
                meter=meter, days=days, total=_range_total(meter, stored, unique_totals)
            )
        )
    return result


# Events of the edges of a span that are not whole local days, counted the way the rollups count
# them: rolled up (not in the inbox) and effective (no rolled-up correction references them).
_EDGE_EVENTS = """
edge AS (
    SELECT e.meter_id, e.id, e.occurred_at, e.value, e.unique_value
    FROM metering_usageevent e
    WHERE e.account_id = %(a)s AND e.meter_id = ANY(%(ids)s)
      AND ((e.occurred_at >= %(h0)s AND e.occurred_at < %(h1)s)
           OR (e.occurred_at >= %(t0)s AND e.occurred_at < %(t1)s))
      AND NOT EXISTS (SELECT 1 FROM metering_rollupinbox i WHERE i.event_id = e.id)
      AND NOT EXISTS (
          SELECT 1 FROM metering_usageevent c
          WHERE c.corrects_id = e.id
            AND NOT EXISTS (SELECT 1 FROM metering_rollupinbox j WHERE j.event_id = c.id))
)
"""


def usage_totals_between(
    *, account: Account, meters: list[Meter], start: datetime, end: datetime
) -> dict[int, Decimal | None]:
    """Exact usage of each meter over the instants `[start, end)`, by meter id: what a billing
    period whose bounds are UTC instants holds (0, or None for max/latest, where nothing).

    The whole local days of the span (in the account's current zone) come from the daily
    rollups; the edges that are not whole days (a period cut in a zone the account no longer
    uses starts or ends mid-day) from the raw events, counted as the rollups count them. So a
    span of whole days costs what `usage_daily_by_meter` does, and the totals of adjacent spans
    always add up to the total of their union. Two queries (one without unique_count meters).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise UsageRangeError("Times must carry a UTC offset.")
    if end <= start:
        raise UsageRangeError("The range is empty: 'end' must be after 'start'.")
    if not meters:
        return {}
    tz = account.timezone
    first = periods.local_date(start, tz)
    if periods.day_start_utc(first, tz) < start:
        first += periods.DAY
    last = periods.local_date(end, tz)
    head_end, tail_start = periods.day_start_utc(first, tz), periods.day_start_utc(last, tz)
    if first < last:
        lo, hi, edges = first, last, (start, head_end, tail_start, end)
    else:  # no whole local day inside: all of it is an edge
        lo = hi = first
        edges = (start, end, end, end)
    params = {
        "a": account.pk,
        "ids": [m.pk for m in meters],
        "lo": lo,
        "hi": hi,
        **dict(zip(("h0", "h1", "t0", "t1"), edges, strict=True)),
    }
    rows = _fetch(
        f"""
        WITH {_EDGE_EVENTS}, parts AS (
            SELECT r.meter_id, r.count, r.sum, r.max, r.latest_at, r.latest_event_id,
                   r.latest_value, r.unique_count, r.folded
            FROM metering_rollupdaily r
            WHERE r.account_id = %(a)s AND r.meter_id = ANY(%(ids)s) AND r.dim_key = ''
              AND r.day >= %(lo)s AND r.day < %(hi)s
            UNION ALL
            SELECT meter_id, (value IS NOT NULL)::int, coalesce(value, 0), value,
                   CASE WHEN value IS NOT NULL THEN occurred_at END, id, value, 0, false
            FROM edge
        )
        SELECT r.meter_id, {_COMBINE} FROM parts r GROUP BY r.meter_id
        """,
        params,
    )
    names = ["count", "sum", "max", "latest_value", "unique_count", "folded"]
    stats = {row[0]: dict(zip(names, row[1:], strict=True)) for row in rows}
    unique: dict[int, int] = {}
    if any(m.aggregation == A.UNIQUE_COUNT for m in meters):
        unique = dict(
            _fetch(
                f"""
                WITH {_EDGE_EVENTS}
                SELECT meter_id, count(DISTINCT v) FROM (
                    SELECT meter_id, value AS v FROM metering_rollupdailydistinct
                    WHERE account_id = %(a)s AND meter_id = ANY(%(ids)s) AND dim_key = ''
                      AND day >= %(lo)s AND day < %(hi)s
                    UNION ALL
                    SELECT meter_id, unique_value FROM edge WHERE unique_value <> ''
                ) u GROUP BY meter_id
                """,
                params,
            )
        )
    result: dict[int, Decimal | None] = {}
    for meter in meters:
        if meter.aggregation == A.UNIQUE_COUNT:
            result[meter.pk] = Decimal(unique.get(meter.pk, 0))
        else:
            value = stats.get(meter.pk, {}).get(_VALUE_COLUMN[meter.aggregation])
            result[meter.pk] = _as_decimal(meter, value)
    return result


def _range_total(meter: Meter, stored: dict[date, dict], unique_totals: dict) -> Decimal | None:
    aggregation = meter.aggregation
    if aggregation == A.UNIQUE_COUNT:
        return Decimal(unique_totals.get(meter.pk, 0))
    if aggregation in (A.COUNT, A.SUM):
        column = _VALUE_COLUMN[aggregation]
        return sum((Decimal(s[column]) for s in stored.values()), Decimal(0))
    if aggregation == A.MAX:
        values = [s["max"] for s in stored.values() if s["max"] is not None]
        return max(values) if values else None
    # latest: the latest of the days; days are disjoint and ordered in time.
    for day in sorted(stored, reverse=True):
        if stored[day]["latest_value"] is not None:
            return Decimal(stored[day]["latest_value"])
    return None


def usage_cumulative(
    *, account: Account, meter: Meter, first: date, end: date
) -> list[tuple[date, Decimal | None]]:
    """Usage from `first` up to and including each local day of `[first, end)`: what a
    "cumulative usage against the limit" chart plots. Running sum for count and sum, running
    max for max, the latest value so far for latest, and for unique_count the distinct values
    seen so far (each value counted on the day it first appears in the range, so the last
    point equals the range's exact total). One query."""
    rng = usage_range(timezone=account.timezone, granularity="day", start=first, end=end)
    params = {"a": account.pk, "m": meter.pk, "lo": first, "hi": end}
    if meter.aggregation == A.UNIQUE_COUNT:
        rows = _fetch(
            """
            SELECT first_day, count(*) FROM (
                SELECT value, min(day) AS first_day FROM metering_rollupdailydistinct
                WHERE account_id = %(a)s AND meter_id = %(m)s AND dim_key = ''
                  AND day >= %(lo)s AND day < %(hi)s
                GROUP BY value
            ) firsts
            GROUP BY first_day
            """,
            params,
        )
    else:
        column = _VALUE_COLUMN[meter.aggregation]
        rows = _fetch(
            f"""
            SELECT day, {column} FROM metering_rollupdaily
            WHERE account_id = %(a)s AND meter_id = %(m)s AND dim_key = ''
              AND day >= %(lo)s AND day < %(hi)s
            """,
            params,
        )
    per_day = dict(rows)
    running: Decimal | None = _empty(meter)
    points = []
    for day in rng.buckets:
        value = per_day.get(day)
        if value is not None:
            value = Decimal(value)
            if meter.aggregation in (A.COUNT, A.SUM, A.UNIQUE_COUNT):
                running = (running or Decimal(0)) + value
            elif meter.aggregation == A.MAX:
                running = value if running is None else max(running, value)
            else:
                running = value
        points.append((day, running))
    return points


# --- what the rollups do not hold yet ----------------------------------------------------------

# Index-backed: the inbox by (account, event_id), then the event by its primary key.
_USAGE_PENDING = """
SELECT EXISTS (
    SELECT 1 FROM metering_rollupinbox i
    JOIN metering_usageevent e ON e.id = i.event_id
    WHERE i.account_id = %s AND e.occurred_at < %s
)
"""


def usage_pending_before(*, account_id: int, before: datetime) -> bool:
    """Whether an event of the account that occurred before the instant `before` still waits in
    the rollup inbox: until it is drained, the rollups of anything ending at `before` are not
    final (billing must not close a period on them)."""
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_PENDING, [account_id, before])
        return bool(cursor.fetchone()[0])


# The value of a max / unique_count / latest meter over [lo, hi) from the raw effective events
# (those no correction replaces), whether rolled up yet or not. Index-backed (account, meter,
# occurred_at).
_GAUGE_SQL = """
SELECT max(e.value),
       count(DISTINCT e.unique_value) FILTER (WHERE e.unique_value <> ''),
       (array_agg(e.value ORDER BY e.occurred_at DESC, e.id DESC)
            FILTER (WHERE e.value IS NOT NULL))[1]
FROM metering_usageevent e
WHERE e.account_id = %s AND e.meter_id = %s AND e.occurred_at >= %s AND e.occurred_at < %s
  AND NOT EXISTS (
      SELECT 1 FROM metering_usageevent c WHERE c.corrects_id = e.id AND c.corrects_id IS NOT NULL)
"""


def usage_gauge_from_events(
    *, meter: Meter, account_id: int, start: datetime, end: datetime
) -> Decimal:
    """The value of a max, unique_count or latest meter over the instants `[start, end)`, from
    the events themselves (including those not rolled up yet): what billing pushes as a
    period-to-date value. 0 where nothing. One query."""
    with connection.cursor() as cursor:
        cursor.execute(_GAUGE_SQL, [account_id, meter.pk, start, end])
        top, distinct, latest = cursor.fetchone()
    if meter.aggregation == A.UNIQUE_COUNT:
        return Decimal(distinct or 0)
    value = top if meter.aggregation == A.MAX else latest
    return Decimal(0) if value is None else Decimal(value)


# --- the definition, from raw events ---------------------------------------------------------


@dataclass(frozen=True)
class RawAggregate:
    account_id: int
    meter_id: int
    dim_key: str
    dim_value: str
    bucket: date | datetime
    count: int
    sum: Decimal
    max: Decimal | None
    latest_value: Decimal | None
    latest_at: datetime | None
    latest_event_id: int | None
    unique_count: int
    folded: bool


def rollup_raw_aggregates(
    *,
    granularity: Granularity,
    since: date,
    until: date,
    account_ids: list[int] | None = None,
    include_pending: bool = True,
) -> list[RawAggregate]:
    """What the rollup rows of local days (or UTC hours from `since` 00:00 UTC) in
    `[since, until)` must hold, computed from the raw, effective events with the same bucket
    and dimension rules the rollup uses (dimension values kept per the current daily rows, the
    rest folded into "other"). With `include_pending` (the default) events still waiting in the
    inbox count too: that is the aggregate a fully drained rollup equals. Heavy; for checks and
    tests, not for pages."""
    if granularity not in ("day", "hour"):
        raise UsageRangeError("Granularity is 'day' or 'hour'.")
    ids = (
        sorted(account_ids)
        if account_ids is not None
        else list(Account.objects.values_list("pk", flat=True))
    )
    params = rollup_services.rollup_range_params(
        account_ids=ids, since=since, until=until, pending=include_pending
    )
    with transaction.atomic(), connection.cursor() as cursor:
        rows = rollup_services.rollup_expected_rows(cursor, params, grain=granularity)
    return [
        RawAggregate(
            account_id=r[0],
            meter_id=r[1],
            dim_key=r[2],
            dim_value=r[3],
            bucket=r[4],
            count=r[5],
            sum=r[6],
            max=r[7],
            latest_value=r[8],
            latest_at=r[9],
            latest_event_id=r[10],
            unique_count=r[11],
            folded=r[12],
        )
        for r in rows
    ]


def rollup_stored_rows(
    *, granularity: Granularity, since: date, until: date, account_ids: list[int] | None = None
) -> list[RawAggregate]:
    """The stored rollup rows of the same range, in the same shape, leaving out rows a
    recompute emptied (kept only as the record of which dimension values are kept)."""
    from metering.models import RollupDaily, RollupHourly

    model = RollupDaily if granularity == "day" else RollupHourly
    bucket = "day" if granularity == "day" else "hour"
    lo: date | datetime = since
    hi: date | datetime = until
    if granularity == "hour":
        lo, hi = _as_utc(since), _as_utc(until)
    rows = model.objects.filter(**{f"{bucket}__gte": lo, f"{bucket}__lt": hi})
    if account_ids is not None:
        rows = rows.filter(account_id__in=account_ids)
    result = []
    for r in rows:
        empty = (
            r.count == 0
            and r.sum == 0
            and r.max is None
            and r.latest_event_id is None
            and r.unique_count == 0
            and not r.folded
        )
        if empty:
            continue
        result.append(
            RawAggregate(
                account_id=r.account_id,
                meter_id=r.meter_id,
                dim_key=r.dim_key,
                dim_value=r.dim_value,
                bucket=getattr(r, bucket),
                count=r.count,
                sum=r.sum,
                max=r.max,
                latest_value=r.latest_value,
                latest_at=r.latest_at,
                latest_event_id=r.latest_event_id,
                unique_count=r.unique_count,
                folded=r.folded,
            )
        )
    return result


def usage_by_dimension_values(
    *, account: Account, meters: list[Meter], first: date, end: date
) -> dict[int, dict[tuple[str, str], Decimal]]:
    """Usage of the count and sum meters among `meters` over local days `[first, end)` per
    (dimension, value), by meter id: what each dimension value contributed, e.g.
    `{7: {("instance_type", "large"): Decimal("2310.5"), ...}}`. Values the rollup folded
    into "other" are kept under that name. One query whatever the number of meters (other
    aggregations do not add up across values and are left out)."""
    additive = [m for m in meters if m.aggregation in (A.COUNT, A.SUM) and m.dimensions]
    if not additive:
        return {}
    by_id = {m.pk: m for m in additive}
    rows = _fetch(
        """
        SELECT r.meter_id, r.dim_key, r.dim_value, sum(r.count), sum(r.sum)
        FROM metering_rollupdaily r
        WHERE r.account_id = %(a)s AND r.meter_id = ANY(%(ids)s) AND r.dim_key <> ''
          AND r.day >= %(lo)s AND r.day < %(hi)s
        GROUP BY r.meter_id, r.dim_key, r.dim_value
        """,
        {"a": account.pk, "ids": list(by_id), "lo": first, "hi": end},
    )
    result: dict[int, dict[tuple[str, str], Decimal]] = {pk: {} for pk in by_id}
    for meter_id, dim_key, dim_value, count, total in rows:
        meter = by_id[meter_id]
        if dim_key not in (meter.dimensions or []):
            continue
        value = count if meter.aggregation == A.COUNT else total
        result[meter_id][(dim_key, dim_value)] = Decimal(value or 0)
    return result
