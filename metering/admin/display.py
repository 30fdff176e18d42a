"""How values look in every admin table: one way for ids, numbers, times and periods.

Used by every app's admins (and applied to every changelist by AuditedModelAdmin, see
`display_column`), so a table fits 1400 px with the sidebar open and reads the same everywhere:

- long identifiers (provider ids, installation ids, hashes) shortened, the full value on hover
  (the `title` attribute) and in the text a browser copies;
- numbers right-aligned with tabular digits (a cell whose column name starts with `num_`, or
  any `<span class="num">`), decimals without trailing zeros;
- every time with its zone: instants in UTC (`2026-11-30 02:05 UTC`);
- a period as its first and last day, inclusive: `1 Nov – 30 Nov 2026`.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.utils.html import format_html

from metering.decimals import decimal_text

# An identifier longer than this is shortened to its first SHORT_KEEP characters and "…".
SHORT_MAX = 14
SHORT_KEEP = 12
EMPTY = "–"


def short_id(value, *, keep: int = SHORT_KEEP) -> str:
    """`in_1PqX2Y3Z…` with the whole identifier on hover; short values unchanged."""
    if value in (None, ""):
        return EMPTY
    text = str(value)
    if len(text) <= max(keep + 2, SHORT_MAX):
        return text
    return format_html('<span class="mono short-id" title="{}">{}…</span>', text, text[:keep])


def decimal(value) -> str:
    """Exact, without trailing zeros, thousands separated: Decimal('12500.500') -> '12,500.5'."""
    if value is None:
        return EMPTY
    text = decimal_text(Decimal(value))
    sign, text = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, _, fraction = text.partition(".")
    whole = f"{int(whole):,}"
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def number(value, unit: str = "") -> str:
    """A right-aligned number (integer or decimal), with its unit when it has one."""
    if value is None:
        return format_html('<span class="num">{}</span>', EMPTY)
    text = decimal(value)
    if unit:
        return format_html('<span class="num">{}&nbsp;{}</span>', text, unit)
    return format_html('<span class="num">{}</span>', text)


def utc_time(value: dt.datetime | None, *, seconds: bool = False) -> str:
    """An instant in UTC with the zone said: `2026-11-30 02:05 UTC`."""
    if value is None:
        return EMPTY
    value = value.astimezone(dt.UTC)
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if seconds else f"{value:%Y-%m-%d %H:%M} UTC"


def period_range(first: dt.date | None, end: dt.date | None, *, end_exclusive: bool = True) -> str:
    """A period as its first and last day, both inclusive: `1 Nov – 30 Nov 2026`.

    Periods are stored with an exclusive end (the next period's first day); pass
    `end_exclusive=False` when `end` is already the last day.
    """
    if first is None or end is None:
        return EMPTY
    last = end - dt.timedelta(days=1) if end_exclusive else end
    if last < first:
        last = first
    if first.year != last.year:
        return f"{first:%-d %b %Y} – {last:%-d %b %Y}"
    return f"{first:%-d %b} – {last:%-d %b %Y}"
