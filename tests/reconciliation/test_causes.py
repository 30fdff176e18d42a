"""The cause analysis alone (a pure function): each cause with its evidence, and the ranking."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from reconciliation.causes import CellInput, DayNumbers, analyse

D = Decimal


def cell(**kwargs) -> CellInput:
    defaults = {"additive": True, "unit": "calls", "customer_id": "cus_1"}
    defaults["provider_meter_aggregation"] = "sum"
    defaults.update(kwargs)
    return CellInput(**defaults)


def codes(causes) -> list[str]:
    return [c["code"] for c in causes]


def test_a_matching_cell_has_no_cause():
    assert analyse(cell(ours=D(10), reported=D(10), provider=D(10))) == []


def test_the_provider_rounding_our_value_is_rounding():
    causes = analyse(cell(ours=D("10.1234"), reported=D("10.1234"), provider=D("10.12"), unit="GB"))

    assert codes(causes) == ["rounding"]
    assert causes[0]["evidence"]["places"] == 2
    assert "rounded to 2 decimal place(s)" in causes[0]["sentence"]


def test_a_provider_meter_that_aggregates_differently_is_meter_config():
    causes = analyse(
        cell(ours=D(30), reported=D(30), provider=D(12), provider_meter_aggregation="last")
    )

    assert codes(causes) == ["meter_config"]
    assert causes[0]["sentence"] == "The provider's meter aggregates by last, ours needs sum."


def test_usage_too_old_to_send_is_too_old_and_what_is_left_is_unexplained():
    causes = analyse(cell(ours=D(100), reported=D(90), provider=D(90), too_old=D(6)))

    assert codes(causes) == ["too_old", "unexplained"]
    assert [c["score"] for c in causes] == ["0.6000", "0.4000"]
    assert "35-day window" in causes[0]["sentence"]


def test_usage_a_billing_hold_keeps_back_is_put_down_to_the_hold_after_the_ledger_causes():
    causes = analyse(cell(ours=D(100), reported=D(60), provider=D(60), pending=D(10), held=True))

    assert codes(causes) == ["billing_hold", "not_pushed"]
    assert [c["amount"] for c in causes] == ["30", "10"]
    assert "billing hold" in causes[0]["sentence"]
    # Not held: the same gap is unexplained.
    assert codes(analyse(cell(ours=D(100), reported=D(60), provider=D(60), pending=D(10)))) == [
        "unexplained",
        "not_pushed",
    ]


def test_causes_are_ranked_by_the_share_of_the_gap_they_explain():
    days = [
        DayNumbers(date(2026, 11, 1), D(5), D(5), D(0), D(3)),
        DayNumbers(date(2026, 11, 2), D(5), D(5), D(0), D(5)),
    ]
    causes = analyse(cell(ours=D(10), reported=D(7), provider=D(5), pending=D(3), days=days))

    assert codes(causes) == ["not_pushed", "provider_missing"]
    assert causes[1]["evidence"]["days"] == {"2026-11-01": "2"}
    assert "(by UTC day: Nov 01 +2)" in causes[1]["sentence"]


def test_no_customer_at_the_provider_is_customer_mapping():
    causes = analyse(cell(ours=D(10), reported=D(10), provider=D(0), customer_id=""))

    assert codes(causes) == ["customer_mapping"]
