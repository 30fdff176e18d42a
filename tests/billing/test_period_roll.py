"""The hourly period roll: activate due subscriptions, close ended periods once their usage is
rolled up, open the next periods; safe to run twice."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from billing import tasks
from billing.models import BillingPeriod, Subscription
from billing.services.periods import (
    PeriodInGrace,
    PeriodNotEnded,
    PeriodUsagePending,
    billing_period_begin_close,
    billing_periods_roll,
)
from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering.services import rollups
from tests.billing.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

D = dt.date


def utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


@pytest.fixture
def subscribed(db):
    """A Kolkata account on a plan with a $10 fee and 1 cent per call, from Jan 1 2024."""
    account = AccountFactory(timezone="Asia/Kolkata", currency="USD")
    plan = plan_create(
        code="roll", name="Roll", currency="USD", flat_fee_minor=1000, minimum_commitment_minor=0
    )
    meter = MeterFactory(code="calls", unit="calls")
    price_add(plan=plan, meter=meter, model="per_unit", unit_price=Decimal("0.01"))
    subscription = subscription_create(
        account=account, plan=plan, started_at=D(2024, 1, 1), now=utc(2024, 1, 10)
    )
    return subscription, meter


def _periods(subscription) -> list[tuple]:
    return list(
        BillingPeriod.objects.filter(subscription=subscription)
        .order_by("start_date")
        .values_list("start_date", "state", "total_minor")
    )


def test_an_ended_period_closes_after_the_grace_with_its_rolled_up_usage(subscribed, settings):
    settings.BILLING_CLOSE_GRACE_MINUTES = 60
    subscription, meter = subscribed
    # January in Kolkata ends at 2024-01-31 18:30 UTC; 150 calls in it, one after it.
    insert(*(event(subscription.account, meter, utc(2024, 1, 20, 9, i % 60)) for i in range(150)))
    insert(event(subscription.account, meter, utc(2024, 1, 31, 18, 45)))
    rollups.rollup_drain()

    # Within the grace: January stays open; February, already begun, is opened.
    within_grace = billing_periods_roll(now=utc(2024, 1, 31, 19, 29))
    assert (within_grace.closed, within_grace.opened) == (0, 1)
    assert _periods(subscription)[0][1] == BillingPeriod.State.OPEN

    roll = billing_periods_roll(now=utc(2024, 1, 31, 19, 31))

    assert (roll.closed, roll.opened, roll.waiting_for_rollups) == (1, 0, 0)
    assert _periods(subscription) == [
        (D(2024, 1, 1), BillingPeriod.State.CLOSED, 1000 + 150),
        (D(2024, 2, 1), BillingPeriod.State.OPEN, None),
    ]
    # Run again: nothing changes twice.
    again = billing_periods_roll(now=utc(2024, 1, 31, 19, 45))
    assert (again.closed, again.opened, again.activated) == (0, 0, 0)
    assert len(_periods(subscription)) == 2


def test_a_period_waits_while_its_events_are_still_in_the_rollup_inbox(subscribed):
    subscription, meter = subscribed
    insert(*(event(subscription.account, meter, utc(2024, 1, 30, 12, i)) for i in range(7)))

    waiting = billing_periods_roll(now=utc(2024, 2, 2))
    assert (waiting.closed, waiting.waiting_for_rollups) == (0, 1)
    assert _periods(subscription)[0][1] == BillingPeriod.State.OPEN

    rollups.rollup_drain()
    roll = billing_periods_roll(now=utc(2024, 2, 2, 0, 5))
    assert roll.closed == 1
    assert _periods(subscription)[0] == (D(2024, 1, 1), BillingPeriod.State.CLOSED, 1000 + 7)


def test_events_of_the_next_period_in_the_inbox_do_not_hold_a_close(subscribed):
    subscription, meter = subscribed
    insert(event(subscription.account, meter, utc(2024, 2, 1, 12)))  # February, not drained
    roll = billing_periods_roll(now=utc(2024, 2, 2))
    assert roll.closed == 1
    assert _periods(subscription)[0] == (D(2024, 1, 1), BillingPeriod.State.CLOSED, 1000)


def test_a_close_left_half_done_is_finished(subscribed):
    subscription, _ = subscribed
    period = BillingPeriod.objects.get(subscription=subscription)
    BillingPeriod.objects.filter(pk=period.pk).update(state=BillingPeriod.State.CLOSING)
    roll = billing_periods_roll(now=utc(2024, 2, 2))
    assert roll.closed == 1
    assert _periods(subscription)[0][1:] == (BillingPeriod.State.CLOSED, 1000)


def test_a_closing_period_is_not_finished_while_its_usage_waits_in_the_inbox(subscribed):
    # Marked closing (by the admin, or a close interrupted) while 4 January calls still wait to
    # be rolled up: finishing it now would leave them off the invoice for ever.
    subscription, meter = subscribed
    insert(*(event(subscription.account, meter, utc(2024, 1, 31, 18, i)) for i in range(4)))
    period = BillingPeriod.objects.get(subscription=subscription)
    BillingPeriod.objects.filter(pk=period.pk).update(state=BillingPeriod.State.CLOSING)

    waiting = billing_periods_roll(now=utc(2024, 2, 2))

    assert (waiting.closed, waiting.waiting_for_rollups) == (0, 1)
    assert _periods(subscription)[0] == (D(2024, 1, 1), BillingPeriod.State.CLOSING, None)

    rollups.rollup_drain()
    roll = billing_periods_roll(now=utc(2024, 2, 2, 1))
    assert roll.closed == 1
    assert _periods(subscription)[0] == (D(2024, 1, 1), BillingPeriod.State.CLOSED, 1000 + 4)


def test_begin_close_refuses_within_the_grace_and_while_usage_is_pending(subscribed, settings):
    settings.BILLING_CLOSE_GRACE_MINUTES = 60
    subscription, meter = subscribed
    period = BillingPeriod.objects.get(subscription=subscription)  # ends 2024-01-31 18:30 UTC
    insert(event(subscription.account, meter, utc(2024, 1, 31, 18, 29)))

    with pytest.raises(PeriodNotEnded):
        billing_period_begin_close(period=period, now=utc(2024, 1, 31, 18, 29))
    with pytest.raises(PeriodInGrace):
        billing_period_begin_close(period=period, now=utc(2024, 1, 31, 19, 29))
    with pytest.raises(PeriodUsagePending):
        billing_period_begin_close(period=period, now=utc(2024, 1, 31, 19, 31))
    period.refresh_from_db()
    assert period.state == BillingPeriod.State.OPEN

    rollups.rollup_drain()
    assert billing_period_begin_close(period=period, now=utc(2024, 1, 31, 19, 31)).state == (
        BillingPeriod.State.CLOSING
    )


def test_a_pending_subscription_is_activated_with_its_first_period(db):
    account = AccountFactory(timezone="America/New_York")
    plan = plan_create(
        code="later", name="Later", currency="USD", flat_fee_minor=0, minimum_commitment_minor=0
    )
    subscription = subscription_create(
        account=account, plan=plan, started_at=D(2024, 3, 1), now=utc(2024, 2, 20)
    )
    assert subscription.status == Subscription.Status.PENDING
    # 04:59 UTC on March 1 is still February 29 in New York.
    assert billing_periods_roll(now=utc(2024, 3, 1, 4, 59)).activated == 0

    roll = billing_periods_roll(now=utc(2024, 3, 1, 5, 0))

    subscription.refresh_from_db()
    assert roll.activated == 1
    assert subscription.status == Subscription.Status.ACTIVE
    assert _periods(subscription) == [(D(2024, 3, 1), BillingPeriod.State.OPEN, None)]


def test_the_roll_task_is_scheduled_and_leaves_no_month_without_a_period(subscribed, settings):
    assert settings.CELERY_BEAT_SCHEDULE["billing-periods-roll"]["task"] == (
        "billing.tasks.billing_periods_roll"
    )
    subscription, _ = subscribed
    # The roll has not run since January 2024: it opens every month up to the current one, and
    # the next run closes all the ended ones.
    first = tasks.billing_periods_roll.apply().get()
    assert set(first) == {"activated", "closed", "waiting_for_rollups", "opened", "held"}
    periods = list(BillingPeriod.objects.filter(subscription=subscription).order_by("starts_at"))
    assert first["closed"] == 1 and first["opened"] == len(periods) - 1 > 30
    for earlier, later in itertools.pairwise(periods):
        assert earlier.end_date == later.start_date
    assert periods[-1].starts_at <= dt.datetime.now(dt.UTC) < periods[-1].ends_at

    second = tasks.billing_periods_roll.apply().get()
    assert second["closed"] == len(periods) - 2 and second["opened"] == 0
    states = BillingPeriod.objects.filter(subscription=subscription).values_list("state", flat=True)
    assert list(states).count(BillingPeriod.State.OPEN) == 1


# --- the close hold ------------------------------------------------------------------------------

HOLD_REASONS: list[str] = []


def stub_close_check(*, period, now) -> list[str]:
    """A close check named by its dotted path, as reconciliation's is in production."""
    return list(HOLD_REASONS)


@pytest.fixture
def stub_check(settings):
    settings.BILLING_CLOSE_CHECKS = ["tests.billing.test_period_roll.stub_close_check"]
    HOLD_REASONS[:] = ["calls: ours 150, provider 100 (provider_missing)"]
    yield HOLD_REASONS
    HOLD_REASONS.clear()


def test_a_period_whose_close_check_gives_reasons_is_held_open_until_it_passes(
    subscribed, stub_check, settings
):
    settings.BILLING_CLOSE_GRACE_MINUTES = 60
    subscription, meter = subscribed
    insert(*(event(subscription.account, meter, utc(2024, 1, 20, 9, i % 60)) for i in range(150)))
    rollups.rollup_drain()

    roll = billing_periods_roll(now=utc(2024, 2, 1, 0, 0))

    assert (roll.closed, roll.held) == (0, 1)
    january = BillingPeriod.objects.get(subscription=subscription, start_date=D(2024, 1, 1))
    assert january.state == BillingPeriod.State.OPEN
    assert january.is_held and "provider_missing" in january.hold_reason
    assert january.held_at == utc(2024, 2, 1, 0, 0)
    # Held again for the same reasons: no new history row.
    versions = january.history.count()
    assert billing_periods_roll(now=utc(2024, 2, 1, 1, 0)).held == 1
    assert january.history.count() == versions

    stub_check.clear()
    roll = billing_periods_roll(now=utc(2024, 2, 1, 2, 0))

    assert (roll.closed, roll.held) == (1, 0)
    january.refresh_from_db()
    assert (january.state, january.total_minor, january.hold_reason) == ("closed", 1150, "")


def test_a_close_check_that_fails_holds_its_period_and_the_roll_goes_on(subscribed, settings):
    settings.BILLING_CLOSE_CHECKS = ["tests.billing.test_period_roll.no_such_check"]
    subscription, _meter = subscribed

    roll = billing_periods_roll(now=utc(2024, 2, 1, 2, 0))

    assert (roll.held, roll.opened) == (1, 1)
    january = BillingPeriod.objects.get(subscription=subscription, start_date=D(2024, 1, 1))
    assert january.state == "open" and "no_such_check failed" in january.hold_reason
