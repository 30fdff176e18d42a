"""Why the bill changed, word for word (billing.explain.bill_change_sentence: pure, no database)."""

from __future__ import annotations

from decimal import Decimal

from billing.explain import (
    BillChange,
    DimensionShift,
    LineChange,
    bill_change_sentence,
    percent_text,
    sentence_html,
)

D = Decimal


def compute(previous_units, current_units, previous_minor, current_minor, packages, shifts=()):
    return LineChange(
        kind="usage",
        title="Compute time",
        unit="seconds",
        previous_units=None if previous_units is None else D(previous_units),
        current_units=D(current_units),
        previous_minor=previous_minor,
        current_minor=current_minor,
        model="package",
        previous_packages=packages[0],
        current_packages=packages[1],
        shifts=tuple(shifts),
    )


def fee(minor, previous=None, kind="plan_fee", title="Plan fee"):
    return LineChange(
        kind=kind, title=title, previous_minor=minor if previous is None else previous,
        current_minor=minor,
    )  # fmt: skip


INSTANCE_SHIFTS = (
    DimensionShift("instance_type", "small", D(2500), D(2600)),
    DimensionShift("instance_type", "large", D(592), D(1974)),
)


def test_up_names_the_line_its_packages_and_the_dimension_value_that_drove_it():
    change = BillChange(
        currency="USD",
        previous_total_minor=700,
        current_total_minor=791,
        lines=(fee(610), compute(3092, 4574, 90, 180, (1, 2), INSTANCE_SHIFTS), fee(0, 0)),
    )
    assert bill_change_sentence(change) == (
        "Up $0.91 (+13%) on last period: compute time rose from 3,092 to 4,574 seconds "
        "(+$0.90, now 2 packages instead of 1), mostly `instance_type=large`."
    )


def test_down_names_what_fell():
    shifts = [DimensionShift(s.dimension, s.value, s.current, s.previous) for s in INSTANCE_SHIFTS]
    change = BillChange(
        currency="USD",
        previous_total_minor=791,
        current_total_minor=700,
        lines=(fee(610), compute(4574, 3092, 180, 90, (2, 1), shifts)),
    )
    assert bill_change_sentence(change) == (
        "Down $0.91 (-12%) on last period: compute time fell from 4,574 to 3,092 seconds "
        "(-$0.90, now 1 package instead of 2), mostly `instance_type=large`."
    )


def test_unchanged_with_nothing_moving_is_one_short_sentence():
    change = BillChange(
        currency="USD",
        previous_total_minor=4900,
        current_total_minor=4900,
        lines=(fee(4900), compute(3092, 3100, 90, 90, (1, 1))),
    )
    assert bill_change_sentence(change) == "Unchanged on last period at $49.00."


def test_unchanged_at_the_minimum_commitment_still_says_what_moved_underneath():
    change = BillChange(
        currency="EUR",
        previous_total_minor=50000,
        current_total_minor=50000,
        minimum_commitment_minor=50000,
        lines=(
            compute(3092, 4574, 90, 180, (1, 2)),
            fee(49820, 49910, kind="minimum_commitment", title="Minimum commitment true-up"),
        ),
    )
    assert bill_change_sentence(change) == (
        "Unchanged on last period at €500.00, the plan's minimum commitment: compute time rose "
        "from 3,092 to 4,574 seconds (+€0.90, now 2 packages instead of 1); all within the "
        "minimum."
    )


def test_a_meter_new_this_period():
    tokens = LineChange(
        kind="usage",
        title="LLM tokens",
        unit="tokens",
        previous_units=None,
        current_units=D(1_234_567),
        previous_minor=0,
        current_minor=240,
        model="per_unit",
        shifts=(
            DimensionShift("model", "mini", D(0), D(234_567)),
            DimensionShift("model", "large", D(0), D(1_000_000)),
        ),
    )
    change = BillChange(
        currency="USD", previous_total_minor=4900, current_total_minor=5140, lines=(tokens,)
    )
    assert bill_change_sentence(change) == (
        "Up $2.40 (+4.9%) on last period: new this period, LLM tokens at 1.2M tokens (+$2.40), "
        "mostly `model=large`."
    )


def test_a_meter_that_stopped():
    tokens = LineChange(
        kind="usage", title="LLM tokens", unit="tokens", previous_units=D(1_234_567),
        current_units=D(0), previous_minor=240, current_minor=0, model="per_unit",
    )  # fmt: skip
    change = BillChange(
        currency="USD", previous_total_minor=5140, current_total_minor=4900, lines=(tokens,)
    )
    assert bill_change_sentence(change) == (
        "Down $2.40 (-4.7%) on last period: no LLM tokens this period against 1.2M tokens last "
        "period (-$2.40)."
    )


def test_no_previous_period_names_the_largest_line():
    change = BillChange(
        currency="USD",
        previous_total_minor=None,
        current_total_minor=791,
        lines=(fee(610), compute(None, 4574, 0, 180, (None, 2))),
    )
    assert bill_change_sentence(change) == (
        "No previous period to compare with: $7.91 projected for this period, the largest part "
        "plan fee ($6.10)."
    )
    change = BillChange(
        currency="USD",
        previous_total_minor=None,
        current_total_minor=181,
        lines=(fee(1), compute(None, 4574, 0, 180, (None, 2))),
    )
    assert bill_change_sentence(change).endswith(
        "the largest part compute time (4,574 seconds, $1.80)."
    )


def test_graduated_and_volume_tiers_say_which_rate_now_applies():
    calls = LineChange(
        kind="usage", title="API calls", unit="calls", previous_units=D(900_000),
        current_units=D(1_500_000), previous_minor=36_000, current_minor=52_000,
        model="graduated", previous_rate=D("0.0004"), current_rate=D("0.0002"),
    )  # fmt: skip
    users = LineChange(
        kind="usage", title="Monthly active users", unit="users", previous_units=D(90),
        current_units=D(150), previous_minor=18_000, current_minor=27_500, model="volume",
        previous_rate=D("2.00"), current_rate=D("1.50"),
    )  # fmt: skip
    change = BillChange(
        currency="USD",
        previous_total_minor=54_000,
        current_total_minor=79_500,
        lines=(calls, users),
    )
    assert bill_change_sentence(change) == (
        "Up $255.00 (+47%) on last period: API calls rose from 900K to 1.5M calls (+$160.00, "
        "now reaching the $0.0002 tier instead of the $0.0004 one); monthly active users rose "
        "from 90 to 150 users (+$95.00, now all at $1.50 each instead of $2.00)."
    )


def test_at_most_three_lines_biggest_change_first_and_only_those_moving_the_same_way():
    def line(title, before, after):
        return LineChange(
            kind="usage", title=title, unit="units", previous_units=D(before),
            current_units=D(after), previous_minor=before, current_minor=after,
        )  # fmt: skip

    lines = (
        line("Alpha", 100, 150),
        line("Beta", 100, 400),
        line("Gamma", 100, 90),
        line("Delta", 100, 110),
        line("Epsilon", 100, 101),
    )
    change = BillChange(
        currency="USD", previous_total_minor=500, current_total_minor=851, lines=lines
    )
    assert bill_change_sentence(change) == (
        "Up $3.51 (+70%) on last period: beta rose from 100 to 400 units (+$3.00); alpha rose "
        "from 100 to 150 units (+$0.50); delta rose from 100 to 110 units (+$0.10)."
    )


def test_currencies_with_zero_and_three_decimals_and_thousands_separators():
    yen = BillChange(
        currency="JPY",
        previous_total_minor=50_000,
        current_total_minor=1_251_200,
        lines=(compute(9_999, 1_234_567, 1_000, 1_202_200, (3, 343)),),
    )
    assert bill_change_sentence(yen) == (
        "Up ¥1,201,200 (+2,402%) on last period: compute time rose from 9,999 to 1.2M seconds "
        "(+¥1,201,200, now 343 packages instead of 3)."
    )
    dinar = BillChange(
        currency="KWD",
        previous_total_minor=10_000,
        current_total_minor=11_235,
        lines=(compute(3_092, 4_574, 1_000, 2_235, (1, 2)),),
    )
    assert bill_change_sentence(dinar) == (
        "Up KWD 1.235 (+12%) on last period: compute time rose from 3,092 to 4,574 seconds "
        "(+KWD 1.235, now 2 packages instead of 1)."
    )


def test_drivers_skip_a_dimension_with_one_value_and_name_two_when_neither_carries_half():
    shifts = (
        DimensionShift("region", "us-east", D(1000), D(2000)),
        DimensionShift("endpoint", "/v1/search", D(400), D(750)),
        DimensionShift("endpoint", "/v1/orders", D(300), D(600)),
        DimensionShift("endpoint", "/v1/users", D(300), D(650)),
    )
    calls = LineChange(
        kind="usage", title="API calls", unit="calls", previous_units=D(1000),
        current_units=D(2000), previous_minor=100, current_minor=200, shifts=shifts,
    )  # fmt: skip
    change = BillChange(currency="USD", previous_total_minor=100, current_total_minor=200,
                        lines=(calls,))  # fmt: skip
    assert bill_change_sentence(change) == (
        "Up $1.00 (+100%) on last period: API calls rose from 1,000 to 2,000 calls (+$1.00), "
        "mostly `endpoint=/v1/search` and `endpoint=/v1/users`."
    )


def test_percent_text_rounds_half_up_and_drops_a_trailing_zero():
    assert percent_text(791, 700) == "+13%"
    assert percent_text(1045, 1000) == "+4.5%"
    assert percent_text(700, 791) == "-12%"
    assert percent_text(1001, 1000) == "+0.1%"
    assert percent_text(1000, 1000) == "0%"


def test_sentence_html_escapes_and_marks_dimension_values_as_code():
    assert sentence_html("Up <b>: mostly `instance_type=<x>`.") == (
        "Up &lt;b&gt;: mostly <code>instance_type=&lt;x&gt;</code>."
    )
