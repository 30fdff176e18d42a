"""Days in an account's time zone, as half-open UTC intervals.

A local day `d` is `[day_start_utc(d), day_start_utc(d + 1))`, where `day_start_utc(d)` is the
first instant whose wall-clock date in the zone is `d`. That is exactly the bucket PostgreSQL's
`(occurred_at AT TIME ZONE zone)::date` puts an event in, so a period built here and a daily
rollup row always agree:

- DST days are 23 or 25 hours long (America/New_York on 2024-03-10 and 2024-11-03);
- zones with half- and quarter-hour offsets (Asia/Kolkata +5:30, Asia/Kathmandu +5:45) start
  their days at :30 and :15 past a UTC hour;
- in the few zones whose DST gap starts at midnight (the wall clock jumps from 23:59:59 to
  01:00), the day starts at the transition instant, not at a non-existent 00:00.

Hourly buckets are UTC hours and need no zone.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _zone(tz: str | tzinfo) -> tzinfo:
    return zoneinfo.ZoneInfo(tz) if isinstance(tz, str) else tz


def local_date(instant: datetime, tz: str | tzinfo) -> date:
    """The wall-clock date of an aware instant in the zone."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(_zone(tz)).date()


def day_start_utc(day: date, tz: str | tzinfo) -> datetime:
    """The first instant (UTC) whose wall-clock date in the zone is `day`."""
    zone = _zone(tz)
    # Both readings of local midnight; they differ only when midnight is in a DST gap or fold.
    candidates = sorted(
        datetime.combine(day, time(0), tzinfo=zone).replace(fold=fold).astimezone(UTC)
        for fold in (0, 1)
    )
    for candidate in candidates:
        local = candidate.astimezone(zone)
        if local.date() == day and local.time() == time(0):
            return candidate
    # Midnight does not exist (a DST gap spans it): the day starts at the transition, which lies
    # within a few hours around the candidates. Search the first second whose date is `day`.
    low = int((candidates[0] - 3 * HOUR).timestamp())
    high = int((candidates[-1] + 3 * HOUR).timestamp())
    if _date_at(low, zone) >= day or _date_at(high, zone) < day:
        raise ValueError(f"cannot locate the start of {day} in {zone}")
    # Invariant: the date at `low` is before `day`, the date at `high` is `day` or later.
    while high - low > 1:
        middle = (low + high) // 2
        if _date_at(middle, zone) >= day:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _date_at(epoch_seconds: int, zone: tzinfo) -> date:
    return datetime.fromtimestamp(epoch_seconds, UTC).astimezone(zone).date()


def day_bounds_utc(day: date, tz: str | tzinfo) -> tuple[datetime, datetime]:
    """`[start, end)` in UTC of the local day."""
    return day_start_utc(day, tz), day_start_utc(day + DAY, tz)


def days_bounds_utc(first: date, end: date, tz: str | tzinfo) -> tuple[datetime, datetime]:
    """`[start, end)` in UTC of the local days `first` up to, not including, `end`."""
    if end < first:
        raise ValueError("end must not be before first")
    return day_start_utc(first, tz), day_start_utc(end, tz)


def day_length(day: date, tz: str | tzinfo) -> timedelta:
    start, end = day_bounds_utc(day, tz)
    return end - start


def iter_days(first: date, end: date) -> Iterator[date]:
    """Dates `first`, `first + 1`, ... before `end`."""
    day = first
    while day < end:
        yield day
        day += DAY


def hour_floor(instant: datetime) -> datetime:
    """The start of the UTC hour that holds the instant."""
    if instant.tzinfo is None:
        raise ValueError("instant must be timezone-aware")
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def iter_hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """UTC hour starts from the hour holding `start` up to, not including, `end`."""
    hour = hour_floor(start)
    while hour < end:
        yield hour
        hour += HOUR


@dataclass(frozen=True)
class LocalDays:
    """A run of local days in a zone with its UTC boundaries, for stating a period on a page."""

    first: date
    end: date  # exclusive
    timezone: str
    start_utc: datetime
    end_utc: datetime

    @classmethod
    def of(cls, *, first: date, end: date, timezone: str) -> LocalDays:
        start_utc, end_utc = days_bounds_utc(first, end, timezone)
        return cls(first=first, end=end, timezone=timezone, start_utc=start_utc, end_utc=end_utc)

    @property
    def days(self) -> list[date]:
        return list(iter_days(self.first, self.end))
