"""The robust, weekday-aware normal level of a daily series: pure functions, Decimal only.

An account's normal level for a day is the median of the same weekday over the last `weeks`
weeks (8 by default), counting only days on or after the meter's first day with usage (days
before it say nothing about the account's normal level; accounts are often provisioned after a
backfill), with a missing day counted as zero usage. Its spread is the median absolute
deviation (MAD) scaled by 1.4826, which estimates the standard deviation of a normal series
while ignoring outliers: one old spike in eight weeks moves neither the median nor the MAD.
Comparing a Monday with Mondays makes a quiet weekend followed by a busy Monday normal, and
keeping the window to recent weeks lets steady growth move the baseline along with it.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

ZERO = Decimal(0)
MAD_SCALE = Decimal("1.4826")
WEEK = dt.timedelta(days=7)
_CONTEXT = decimal.Context(prec=40, rounding=ROUND_HALF_UP)


def median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of nothing")
    middle = n // 2
    if n % 2:
        return ordered[middle]
    with decimal.localcontext(_CONTEXT):
        return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class Baseline:
    median: Decimal
    spread: Decimal  # 1.4826 x MAD
    low: Decimal  # the expected band, never below zero
    high: Decimal
    samples: tuple[tuple[dt.date, Decimal], ...]


def weekday_samples(
    daily: Mapping[dt.date, Decimal], *, on: dt.date, weeks: int, first_usage: dt.date | None
) -> list[tuple[dt.date, Decimal]]:
    """The same weekday as `on` in each of the `weeks` weeks before it, from the first day
    with usage on (a day without a value counts as zero)."""
    if first_usage is None:
        return []
    samples = []
    for back in range(1, weeks + 1):
        day = on - back * WEEK
        if day < first_usage:
            break
        samples.append((day, daily.get(day) or ZERO))
    return samples


def weekday_baseline(
    daily: Mapping[dt.date, Decimal],
    *,
    on: dt.date,
    weeks: int,
    first_usage: dt.date | None,
    band_mads: Decimal,
    min_samples: int,
) -> Baseline | None:
    """The normal level of day `on`, or None with fewer than `min_samples` same-weekday days."""
    samples = weekday_samples(daily, on=on, weeks=weeks, first_usage=first_usage)
    if len(samples) < max(min_samples, 1):
        return None
    values = [value for _, value in samples]
    center = median(values)
    with decimal.localcontext(_CONTEXT):
        spread = median([abs(v - center) for v in values]) * MAD_SCALE
        width = spread * Decimal(band_mads)
        return Baseline(
            median=center,
            spread=spread,
            low=max(ZERO, center - width),
            high=center + width,
            samples=tuple(samples),
        )


def ratio(observed: Decimal, base: Decimal) -> Decimal | None:
    """observed / base to two places, None when base is zero."""
    if not base:
        return None
    with decimal.localcontext(_CONTEXT):
        return (observed / base).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
