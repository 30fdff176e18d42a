"""Why the bill changed, assembled from the database (billing.bill_change): the projection, the
previous period (closed and invoiced, or still open) and the rollups per dimension value."""

from __future__ import annotations

import datetime as dt

import pytest

from billing.bill_change import bill_change_build, bill_change_text
from billing.explain import bill_change_driver
from billing.models import BillingPeriod
from billing.projection import projected_invoice_build
from billing.services.periods import billing_period_close
from tests.billing.projection_scenarios import (
    D,
    api_calls_per_day,
    api_calls_scenario,
    at,
    sum_usage,
)

pytestmark = pytest.mark.django_db

MAR_14_EVENING = at(D(2024, 3, 14), 20)  # a Thursday


def _text(account) -> str:
    invoice = projected_invoice_build(account=account, now=MAR_14_EVENING, with_top=False)
    return bill_change_text(account=account, invoice=invoice)


def test_against_a_closed_invoiced_period_the_line_and_its_biggest_value_are_named():
    s = api_calls_scenario(now=MAR_14_EVENING)
    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), api_calls_per_day)
    previous = BillingPeriod.objects.get(account=s.account, start_date=D(2024, 2, 1))
    billing_period_close(period=previous, now=previous.ends_at + dt.timedelta(hours=1))

    # February invoiced $6,169.00 (22.6M calls); March projects 23M, $6,249.00 (see
    # test_projection). Both endpoints grow in step, /v1/search carries 75% of it.
    assert _text(s.account) == (
        "Up $80.00 (+1.3%) on last period: API calls rose from 22.6M to 23M API calls "
        "(+$80.00), mostly `endpoint=/v1/search`."
    )


def test_against_an_open_period_a_new_dimension_value_that_drove_the_rise_is_named():
    s = api_calls_scenario(now=MAR_14_EVENING)

    def with_export(day: dt.date) -> dict[str, int]:
        extra = {"/v1/export": 500_000} if day >= D(2024, 3, 1) else {}
        return {**api_calls_per_day(day), **extra}

    sum_usage(s.account, s.meter, D(2024, 2, 1), D(2024, 3, 15), with_export)

    invoice = projected_invoice_build(account=s.account, now=MAR_14_EVENING, with_top=False)
    assert invoice.previous.source == "usage"  # February not closed: priced from its rollups
    change = bill_change_build(account=s.account, invoice=invoice)
    text = bill_change_text(account=s.account, invoice=invoice)
    assert text.startswith("Up $")
    assert "API calls rose from 22.6M to" in text
    assert text.endswith("mostly `endpoint=/v1/export`.")
    assert bill_change_driver(change) == ("api_calls", "endpoint")
