"""The projected invoice: usage to date priced exactly, the weekday-aware forecast, the plan fee
and minimum commitment, the previous period and the plain-language explanation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest

from billing.models import BillingPeriod
from billing.pricing import LineKind
from billing.projection import (
    ForecastMethod,
    NoActiveSubscription,
    NoOpenPeriod,
    projected_invoice_build,
)
from billing.services.periods import billing_period_close
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.models import Meter
from metering.services.rollups import rollup_drain
from tests.billing.factories import AccountFactory
from tests.billing.projection_scenarios import (
    D,
    api_calls_per_day,
    api_calls_scenario,
    at,
    count_scenario,
    count_usage,
    is_weekend,
    sum_usage,
)
from tests.metering.factories import MeterFactory
from tests.metering.rollup_support import event, insert

pytestmark = pytest.mark.django_db

MAR_14_EVENING = at(D(2024, 3, 14), 20)  # a Thursday


def _close(period: BillingPeriod) -> BillingPeriod:
    return billing_period_close(period=period, now=period.ends_at + dt.timedelta(hours=1))


def test_support_scenario_lines_totals_previous_period_and_explanations():
    s = api_calls_scenario(now=MAR_14_EVENING)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), api_calls_per_day)
    _close(BillingPeriod.objects.get(account=s.account, start_date=D(2024, 2, 1)))

    invoice = projected_invoice_build(account=s.account, now=MAR_14_EVENING)

    fee, calls, true_up = invoice.lines
    # Mar 1-14: 10 weekdays of 1M and 4 weekend days of 200K.
    assert calls.units_to_date == Decimal("10800000")
    # Mar 15-31: 11 weekdays and 6 weekend days at those weekday means; today is done (1M
    # already, the Thursday mean), so nothing more is added for it.
    assert calls.forecast_units == Decimal("23000000")
    assert calls.forecast_method is ForecastMethod.WEEKDAY_MEAN
    assert calls.included_units == Decimal("1000000")
    # 9.8M billed: 9M at $0.0004 + 800K at $0.0002; at the end 22M: 9M + 13M.
    assert [(t.index, t.units) for t in calls.tiers_to_date] == [
        (0, Decimal("9000000")),
        (1, Decimal("800000")),
    ]
    assert [(t.index, t.units) for t in calls.tiers_projected] == [
        (0, Decimal("9000000")),
        (1, Decimal("13000000")),
    ]
    assert (calls.amount_to_date_minor, calls.projected_amount_minor) == (3_760_00, 6_200_00)
    assert (fee.kind, fee.amount_to_date_minor, fee.projected_amount_minor) == (
        LineKind.PLAN_FEE,
        49_00,
        49_00,
    )
    # $3,809 so far is short of the $5,000 minimum; $6,249 at the end is not.
    assert true_up.kind is LineKind.MINIMUM_COMMITMENT
    assert (true_up.amount_to_date_minor, true_up.projected_amount_minor) == (1_191_00, 0)
    assert (invoice.to_date_total_minor, invoice.projected_total_minor) == (5_000_00, 6_249_00)
    # February (21 weekdays, 8 weekend days): 22.6M calls, 21.6M billed, $6,120 + $49.
    assert invoice.previous.total_minor == 6_169_00
    assert invoice.previous.source == "invoiced"
    assert invoice.change_minor == 80_00
    assert invoice.change_percent == Decimal("1.3")

    assert calls.explanation == (
        "10.8M API calls so far, 8.1M of them to /v1/search; the first 1M are included; the "
        "next 9M at $0.0004 each; the next 800K at $0.0002 each: $3,760.00 so far. At the "
        "current pace about 23M by Mar 31, about $6,200.00."
    )
    assert fee.explanation == "The Scale plan's fixed fee: $49.00 per period."
    assert true_up.explanation == (
        "The plan commits to at least $5,000.00 per period; charges so far come to $3,809.00, "
        "and at the current pace they pass the minimum by Mar 31 ($6,249.00), so no true-up is "
        "expected."
    )
    assert invoice.summary == (
        "$5,000.00 so far in the period Mar 1 – Mar 31; about $6,249.00 expected by Mar 31, "
        "up $80.00 (+1.3%) on the previous period's $6,169.00 (invoiced)."
    )


def test_projection_holds_decimals_and_ints_only_never_floats():
    s = api_calls_scenario(now=MAR_14_EVENING)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), api_calls_per_day)

    invoice = projected_invoice_build(account=s.account, now=MAR_14_EVENING)

    def walk(value, path="invoice"):
        assert not isinstance(value, float), path
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{path}.{f.name}")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(invoice)
    calls = invoice.usage_lines[0]
    assert type(calls.units_to_date) is Decimal and type(calls.forecast_units) is Decimal
    assert type(calls.amount_to_date_minor) is int and type(invoice.projected_total_minor) is int
    assert type(invoice.change_percent) is Decimal
    # February is over but not invoiced yet: priced from its usage, and said so.
    assert (invoice.previous.total_minor, invoice.previous.source) == (6_169_00, "usage")
    assert invoice.summary.endswith(
        "on the previous period's $6,169.00 (so far, not invoiced yet)."
    )


def test_forecast_follows_weekdays_not_a_flat_average():
    # Heavy weekdays (10 requests) and quiet weekends (2) for the four weeks before Wed Mar 13,
    # and 4 requests so far that Wednesday.
    s = count_scenario(started=D(2024, 3, 1), now=at(D(2024, 3, 13), 18))
    count_usage(
        s.account,
        s.meter,
        D(2024, 2, 14),
        D(2024, 3, 13),
        lambda day: 2 if is_weekend(day) else 10,
        drain=False,
    )
    count_usage(s.account, s.meter, D(2024, 3, 13), D(2024, 3, 14), lambda day: 4)

    invoice = projected_invoice_build(account=s.account, now=at(D(2024, 3, 13), 18))

    (line,) = invoice.usage_lines
    # Mar 1-12: 8 weekdays and 4 weekend days, plus today's 4.
    assert line.units_to_date == Decimal(92)
    # Today tops up to a typical Wednesday (+6); Mar 14-31 has 12 weekdays and 6 weekend days.
    assert line.forecast_units == Decimal(92 + 6 + 12 * 10 + 6 * 2) == Decimal(230)
    # A flat daily mean (216 requests / 28 days) would have said 235.
    flat = Decimal(216) / 28
    flat_forecast = (92 + (flat - 4) + 18 * flat).quantize(Decimal(1))
    assert flat_forecast == Decimal(235) != line.forecast_units
    assert (line.amount_to_date_minor, line.projected_amount_minor) == (46_00, 115_00)
    assert line.explanation == (
        "92 requests so far at $0.50 each: $46.00 so far. At the current pace about 230 by "
        "Mar 31, about $115.00."
    )
    assert invoice.previous is None
    assert invoice.summary == (
        "$46.00 so far in the period Mar 1 – Mar 31; about $115.00 expected by Mar 31. There is "
        "no previous period to compare with."
    )


def test_a_meter_that_started_recently_is_not_diluted_by_the_days_before_it():
    s = count_scenario(started=D(2024, 3, 1), now=at(D(2024, 3, 13), 18))
    # Usage only from Mon Mar 11: 6 a day. Mar 13 is complete at 6.
    count_usage(s.account, s.meter, D(2024, 3, 11), D(2024, 3, 14), lambda day: 6)

    invoice = projected_invoice_build(account=s.account, now=at(D(2024, 3, 13), 18))

    (line,) = invoice.usage_lines
    # History is Mon-Tue (6 each); every other weekday takes their mean, 6: 18 days more.
    assert line.forecast_units == Decimal(18 + 18 * 6)


def test_projection_uses_the_local_day_of_the_accounts_time_zone():
    s = count_scenario(started=D(2024, 3, 1), now=at(D(2024, 3, 13), 20), tz="Asia/Kolkata")
    # 19:00 UTC on Mar 13 is 00:30 on Mar 14 in Kolkata.
    insert(event(s.account, s.meter, dt.datetime(2024, 3, 13, 19, tzinfo=dt.UTC)))
    rollup_drain()

    invoice = projected_invoice_build(
        account=s.account, now=dt.datetime(2024, 3, 13, 20, tzinfo=dt.UTC)
    )

    assert invoice.on == D(2024, 3, 14)
    assert invoice.usage_lines[0].units_to_date == Decimal(1)
    assert invoice.days_elapsed == 14


def test_month_end_periods_with_an_anchor_on_the_31st():
    account = AccountFactory()
    meter = MeterFactory(
        code="storage_gb",
        aggregation=Meter.Aggregation.SUM,
        value_property="gb",
        unit="GB-days",
    )
    plan = plan_create(code="store", name="Store", currency="USD")
    price_add(plan=plan, meter=meter, model="per_unit", unit_price="0.01")
    subscription_create(
        account=account,
        plan=plan,
        started_at=D(2024, 1, 31),
        billing_anchor_day=31,
        now=at(D(2024, 2, 29), 12),
    )
    sum_usage(account, meter, D(2024, 1, 31), D(2024, 2, 28), lambda day: {"": 100})
    sum_usage(account, meter, D(2024, 2, 28), D(2024, 2, 29), lambda day: {"": 40})

    # Wed Feb 28 is the last day of the period that began Jan 31 (Feb has no 31st).
    feb = projected_invoice_build(account=account, now=at(D(2024, 2, 28), 13))
    (line,) = feb.usage_lines
    assert (feb.period_start, feb.last_day, feb.days_in_period) == (
        D(2024, 1, 31),
        D(2024, 2, 28),
        29,
    )
    assert line.units_to_date == Decimal(28 * 100 + 40)
    assert line.forecast_units == Decimal(28 * 100 + 100)  # today tops up to its mean
    assert line.explanation.endswith("At the current pace about 2,900 by Feb 28, about $29.00.")

    # Thu Feb 29 begins the next period, to Mar 30 inclusive (the anchor returns in March).
    mar = projected_invoice_build(account=account, now=at(D(2024, 2, 29), 12))
    (line,) = mar.usage_lines
    assert (mar.period_start, mar.last_day) == (D(2024, 2, 29), D(2024, 3, 30))
    assert line.units_to_date == Decimal(0)
    # Thursday today (100) and Mar 1-30: four Wednesdays at (3 x 100 + 40) / 4 = 85, 26 other
    # days at 100.
    assert line.forecast_units == Decimal(100 + 4 * 85 + 26 * 100)
    assert line.explanation.endswith("about 3,040 by Mar 30, about $30.40.")
    # February's period is over, not invoiced yet: priced from its usage.
    assert (mar.previous.total_minor, mar.previous.source) == (28_40, "usage")


def test_max_and_unique_count_meters_forecast_their_current_value():
    account = AccountFactory()
    seats = MeterFactory(
        code="seats", aggregation=Meter.Aggregation.MAX, value_property="n", unit="seats"
    )
    users = MeterFactory(
        code="active_users",
        aggregation=Meter.Aggregation.UNIQUE_COUNT,
        value_property="user",
        unit="active users",
    )
    plan = plan_create(code="team", name="Team", currency="USD")
    price_add(plan=plan, meter=seats, model="per_unit", unit_price="5")
    price_add(plan=plan, meter=users, model="per_unit", unit_price="1.5", included_units="1")
    now = at(D(2024, 3, 13), 18)
    subscription_create(account=account, plan=plan, started_at=D(2024, 3, 1), now=now)
    insert(
        event(account, seats, at(D(2024, 3, 2), 9), "7"),
        event(account, seats, at(D(2024, 3, 5), 9), "12"),
        event(account, seats, at(D(2024, 3, 12), 9), "9"),
        event(account, users, at(D(2024, 3, 2), 9), unique="ann"),
        event(account, users, at(D(2024, 3, 5), 9), unique="ann"),
        event(account, users, at(D(2024, 3, 5), 10), unique="bob"),
        event(account, users, at(D(2024, 3, 12), 9), unique="cy"),
    )
    rollup_drain()

    invoice = projected_invoice_build(account=account, now=now)

    by_meter = {line.meter_code: line for line in invoice.usage_lines}
    user_line, seat_line = by_meter["active_users"], by_meter["seats"]
    # Distinct over the period (ann, bob, cy), not the sum of daily counts (4).
    assert user_line.units_to_date == user_line.forecast_units == Decimal(3)
    assert user_line.forecast_method is ForecastMethod.DISTINCT_SO_FAR
    assert (user_line.amount_to_date_minor, user_line.projected_amount_minor) == (3_00, 3_00)
    assert seat_line.units_to_date == seat_line.forecast_units == Decimal(12)
    assert seat_line.forecast_method is ForecastMethod.CURRENT_VALUE
    assert seat_line.projected_amount_minor == 60_00
    assert seat_line.explanation == (
        "A peak of 12 seats so far at $5.00 each: $60.00 so far. It is billed on the period's "
        "highest value, so the forecast stays at 12: about $60.00 by Mar 31."
    )
    assert user_line.explanation == (
        "3 active users so far; the first 1 are included; the next 2 at $1.50 each: $3.00 so "
        "far. New distinct active users cannot be forecast reliably, so the projection counts "
        "only the 3 seen so far: at least $3.00 by Mar 31."
    )


def test_explanation_says_when_the_forecast_reaches_a_cheaper_tier():
    now = at(D(2024, 3, 5), 20)
    s = api_calls_scenario(now=now)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 6), api_calls_per_day)

    invoice = projected_invoice_build(account=s.account, now=now)

    (calls,) = invoice.usage_lines
    # Mar 1-5: 3 weekdays and 2 weekend days = 3.4M, all billed units still in tier 1.
    assert calls.units_to_date == Decimal(3_400_000)
    assert [t.index for t in calls.tiers_to_date] == [0]
    assert calls.explanation == (
        "3.4M API calls so far, 2.6M of them to /v1/search; the first 1M are included; the "
        "next 2.4M at $0.0004 each: $960.00 so far. At the current pace about 23M by Mar 31, "
        "into the $0.0002 tier, about $6,200.00."
    )
    true_up = invoice.lines[-1]
    assert true_up.amount_to_date_minor == 5_000_00 - 49_00 - 960_00
    assert true_up.projected_amount_minor == 0


def test_minimum_commitment_true_up_is_projected_when_usage_stays_low():
    now = at(D(2024, 3, 14), 20)
    s = api_calls_scenario(now=now, minimum_minor=10_000_00)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), api_calls_per_day)

    invoice = projected_invoice_build(account=s.account, now=now)

    true_up = invoice.lines[-1]
    assert true_up.kind is LineKind.MINIMUM_COMMITMENT
    # Projected charges $6,249.00 fall short of $10,000.00 by $3,751.00.
    assert true_up.projected_amount_minor == 3_751_00
    assert invoice.projected_total_minor == 10_000_00
    assert true_up.explanation == (
        "The plan commits to at least $10,000.00 per period; charges so far come to $3,809.00 "
        "and at the current pace reach $6,249.00 by Mar 31, so about $3,751.00 is added to make "
        "up the minimum."
    )


def test_volume_and_package_prices_are_explained_in_their_own_terms():
    account = AccountFactory()
    builds = MeterFactory(code="builds", unit="builds")
    minutes = MeterFactory(
        code="minutes", aggregation=Meter.Aggregation.SUM, value_property="m", unit="minutes"
    )
    plan = plan_create(code="ci", name="CI", currency="USD")
    price_add(
        plan=plan,
        meter=builds,
        model="volume",
        tiers=[
            {"up_to": "10", "unit_price": "1"},
            {"up_to": None, "unit_price": "0.9", "flat_fee": "1"},
        ],
    )
    price_add(plan=plan, meter=minutes, model="package", package_size=100, package_price="2")
    now = at(D(2024, 3, 2), 18)
    subscription_create(account=account, plan=plan, started_at=D(2024, 3, 1), now=now)
    count_usage(account, builds, D(2024, 3, 1), D(2024, 3, 3), lambda day: 6, drain=False)
    sum_usage(account, minutes, D(2024, 3, 1), D(2024, 3, 3), lambda day: {"": 125})

    invoice = projected_invoice_build(account=account, now=now)

    by_meter = {line.meter_code: line for line in invoice.usage_lines}
    assert by_meter["builds"].explanation.startswith(
        "12 builds so far; all 12 billed at $0.90 each plus a $1.00 tier fee, the rate for more "
        "than 10: $11.80 so far."
    )
    assert by_meter["minutes"].explanation.startswith(
        "250 minutes so far; 250 make 3 packages of 100 at $2.00 each: $6.00 so far."
    )


def test_no_projection_without_a_subscription_or_an_open_period():
    account = AccountFactory()
    with pytest.raises(NoActiveSubscription):
        projected_invoice_build(account=account, now=at(D(2024, 3, 13), 18))

    s = count_scenario(started=D(2024, 3, 1), now=at(D(2024, 3, 13), 18))
    # Periods were opened up to Mar 13; nothing has opened April's yet.
    with pytest.raises(NoOpenPeriod) as raised:
        projected_invoice_build(account=s.account, now=at(D(2024, 4, 2), 9))
    assert raised.value.code == "no_open_period"
