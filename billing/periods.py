"""Billing-period boundaries: pure date arithmetic, no ORM.

A monthly period starts on the subscription's anchor day in the account's time zone and ends
(exclusive) on the anchor day of the next month. A month without the anchor day uses its last
day instead, and the next month goes back to the anchor: anchor 31 gives Jan 31 -> Feb 28 (29 in
a leap year) -> Mar 31 -> Apr 30 -> May 31.

Local dates become UTC instants at the start of the local day (metering.periods.day_start_utc,
the same rule the daily rollups use): in a DST gap at midnight (e.g. America/Santiago) the
instant the day actually begins, and at an ambiguous midnight its first occurrence, so
consecutive periods always share their boundary instant and no instant belongs to two periods
or to none.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import NamedTuple

from metering.periods import day_start_utc
from metering.periods import local_date as metering_local_date

UTC = dt.UTC


class PeriodBounds(NamedTuple):
    start_date: dt.date  # first local day
    end_date: dt.date  # first local day of the next period (exclusive)
    starts_at: dt.datetime  # UTC instant of start_date's local midnight
    ends_at: dt.datetime  # UTC instant of end_date's local midnight (exclusive)


def _check_anchor(anchor_day: int) -> int:
    if isinstance(anchor_day, bool) or not isinstance(anchor_day, int) or not 1 <= anchor_day <= 31:
        raise ValueError(f"The billing anchor day must be 1..31, got {anchor_day!r}.")
    return anchor_day


def _aware(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("Pass an aware datetime (UTC or with a zone), not a naive one.")
    return at


def anchor_date(*, year: int, month: int, anchor_day: int) -> dt.date:
    """The anchor day in the given month, or the month's last day if it is shorter."""
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, min(_check_anchor(anchor_day), last))


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


# One implementation of "the instant a local day begins" and "the local date of an instant":
# metering's, which the daily rollups use too (it also finds the start of a day whose midnight
# falls in a DST gap that does not begin at midnight). Billing names them as before.
local_midnight_utc = day_start_utc
local_date = metering_local_date


def local_days_of(
    *, starts_at: dt.datetime, ends_at: dt.datetime, tz: str | dt.tzinfo
) -> tuple[dt.date, dt.date]:
    """The local days `[first, end)` of zone `tz` that the instants `[starts_at, ends_at)` touch.

    For a period cut in `tz` these are its own dates. For one cut in a zone the account has
    since left, the first and last of them are partial days (see billing.services.periods).
    """
    return local_date(starts_at, tz), local_date(_aware(ends_at) - dt.timedelta.resolution, tz) + (
        dt.timedelta(days=1)
    )


def is_whole_local_days(
    *, starts_at: dt.datetime, ends_at: dt.datetime, tz: str | dt.tzinfo
) -> bool:
    """Whether the instants begin and end at local midnights of `tz` (usage over them can then
    be read from daily rollups alone)."""
    first, end = local_days_of(starts_at=starts_at, ends_at=ends_at, tz=tz)
    return local_midnight_utc(first, tz) == starts_at and local_midnight_utc(end, tz) == ends_at


def period_dates_for(*, anchor_day: int, on: dt.date) -> tuple[dt.date, dt.date]:
    """The (start_date, end_date exclusive) of the monthly period containing local date `on`."""
    this_month = anchor_date(year=on.year, month=on.month, anchor_day=anchor_day)
    if on >= this_month:
        start = this_month
        year, month = _shift_month(on.year, on.month, 1)
        end = anchor_date(year=year, month=month, anchor_day=anchor_day)
    else:
        year, month = _shift_month(on.year, on.month, -1)
        start = anchor_date(year=year, month=month, anchor_day=anchor_day)
        end = this_month
    return start, end


def bounds_for_dates(
    *, start_date: dt.date, end_date: dt.date, tz: str | dt.tzinfo
) -> PeriodBounds:
    """Local dates [start_date, end_date) with their UTC instants."""
    if end_date <= start_date:
        raise ValueError(f"A period must end after it starts ({start_date} to {end_date}).")
    return PeriodBounds(
        start_date, end_date, local_midnight_utc(start_date, tz), local_midnight_utc(end_date, tz)
    )


def period_for_date(*, anchor_day: int, tz: str | dt.tzinfo, on: dt.date) -> PeriodBounds:
    """The monthly period containing the local date `on`."""
    start, end = period_dates_for(anchor_day=anchor_day, on=on)
    return bounds_for_dates(start_date=start, end_date=end, tz=tz)


def period_for(*, anchor_day: int, tz: str | dt.tzinfo, at: dt.datetime) -> PeriodBounds:
    """The monthly period containing the instant `at` (aware), cut in time zone `tz`.

    Returns (start_date, end_date exclusive, starts_at UTC, ends_at UTC exclusive).
    """
    return period_for_date(anchor_day=anchor_day, tz=tz, on=local_date(at, tz))


def periods_between(
    *, anchor_day: int, tz: str | dt.tzinfo, start: dt.datetime, end: dt.datetime
) -> list[PeriodBounds]:
    """Every period overlapping the instants [start, end), in order (empty if end <= start)."""
    _aware(end)
    if end <= _aware(start):
        return []
    periods = [period_for(anchor_day=anchor_day, tz=tz, at=start)]
    while periods[-1].ends_at < end:
        periods.append(period_for_date(anchor_day=anchor_day, tz=tz, on=periods[-1].end_date))
    return periods
