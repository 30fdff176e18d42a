"""The admin's shared display helpers: ids, numbers, times and periods look the same everywhere."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from billing.models import PushLedgerEntry
from metering.admin.common import display_column
from metering.admin.display import decimal, number, period_range, short_id, utc_time
from metering.models import UsageEvent


def test_long_identifier_is_shortened_with_the_whole_value_on_hover():
    html = short_id("in_1PqX2Y3Z4a5b6c7d8e9f0g1h")
    assert html == (
        '<span class="mono short-id" title="in_1PqX2Y3Z4a5b6c7d8e9f0g1h">in_1PqX2Y3Z4…</span>'
    )
    assert short_id("in_1PqX2Y") == "in_1PqX2Y"
    assert short_id("") == "–"


def test_decimals_have_no_trailing_zeros_and_numbers_are_right_aligned_with_their_unit():
    assert decimal(Decimal("12500.500")) == "12,500.5"
    assert decimal(Decimal("-0.000400")) == "-0.0004"
    assert decimal(3) == "3"
    assert number(Decimal("1234.50"), "calls") == '<span class="num">1,234.5&nbsp;calls</span>'


def test_times_are_utc_and_say_so():
    instant = dt.datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert utc_time(instant) == "2026-03-29 01:30 UTC"
    assert utc_time(instant, seconds=True) == "2026-03-29 01:30:00 UTC"


def test_periods_show_their_last_day_inclusive():
    assert period_range(dt.date(2026, 11, 1), dt.date(2026, 12, 1)) == "1 Nov – 30 Nov 2026"
    assert period_range(dt.date(2026, 12, 15), dt.date(2027, 1, 15)) == "15 Dec 2026 – 14 Jan 2027"
    assert (
        period_range(dt.date(2026, 11, 1), dt.date(2026, 11, 30), end_exclusive=False)
        == "1 Nov – 30 Nov 2026"
    )


def test_changelist_columns_are_mapped_by_field_type_and_keep_sorting():
    occurred = display_column(UsageEvent, "occurred_at")
    assert occurred.__name__ == "time_occurred_at" and occurred.admin_order_field == "occurred_at"
    value = display_column(UsageEvent, "value")
    assert value.__name__ == "num_value"
    identifier = display_column(PushLedgerEntry, "identifier")
    assert identifier.__name__ == "id_identifier"
    account = display_column(UsageEvent, "account")
    assert account.admin_order_field == "account__external_id"
    # Choices and unknown names are left alone.
    assert display_column(UsageEvent, "kind") == "kind"
    assert display_column(UsageEvent, "some_method") == "some_method"
