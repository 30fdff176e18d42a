"""Billing holds in alerts: who may release, the release signal, and the warning when held
usage nears the provider's 35-day window."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied

from alerts.models import AlertNotification, BillingHold
from alerts.notify import HOLD_WINDOW_EVENT
from alerts.selectors import held_usage_oldest_by_account, hold_window
from alerts.services import billing_hold_open, billing_hold_release, billing_holds_window_warn
from alerts.signals import billing_hold_released
from alerts.tasks import alerts_billing_holds_window
from metering.models import Meter, UsageEvent
from metering.services.rollups import rollup_drain
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

NOW = datetime.now(UTC).replace(microsecond=0)


def user_in(django_user_model, role: str | None, name: str):
    user = django_user_model.objects.create_user(name, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def account():
    return AccountFactory(
        external_id="hold-co", name="Hold Co", metadata={"cs_owner_email": "owner@example.com"}
    )


@pytest.fixture
def calls():
    return MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)


@pytest.fixture
def the_hold(account):
    return billing_hold_open(account=account, alert=None, at=NOW - timedelta(days=1))


def event(account, meter, at: datetime, n: int) -> UsageEvent:
    transaction_id = f"w-{n}"
    stored = UsageEvent.objects.create(
        account=account,
        meter=meter,
        transaction_id=transaction_id,
        occurred_at=at,
        received_at=NOW,
        value=1,
        properties={},
        content_hash=hashlib.sha256(transaction_id.encode()).digest(),
    )
    rollup_drain()
    return stored


# --- release ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["Support", "Auditor", None])
def test_only_a_manager_may_release_whatever_the_caller(django_user_model, the_hold, role):
    user = user_in(django_user_model, role, f"user-{role}")

    with pytest.raises(PermissionDenied):
        billing_hold_release(hold=the_hold, actor=user, reason="Let it go")

    the_hold.refresh_from_db()
    assert the_hold.status == BillingHold.Status.ACTIVE


def test_a_release_needs_a_reason(django_user_model, the_hold):
    manager = user_in(django_user_model, "Manager", "m")
    with pytest.raises(ValueError):
        billing_hold_release(hold=the_hold, actor=manager, reason="  ")


@pytest.mark.parametrize("amount", [None, 0, -5])
def test_push_and_open_a_credit_needs_the_credits_amount(django_user_model, the_hold, amount):
    manager = user_in(django_user_model, "Manager", "m")
    with pytest.raises(ValueError, match="credit's amount"):
        billing_hold_release(
            hold=the_hold,
            actor=manager,
            reason="Real batch",
            mode="push_and_credit",
            credit_amount_minor=amount,
        )
    the_hold.refresh_from_db()
    assert the_hold.status == BillingHold.Status.ACTIVE


@pytest.mark.parametrize("mode", ["push", "push_and_credit"])
def test_a_release_sends_the_signal_once_after_commit_with_its_arguments(
    django_user_model, the_hold, django_capture_on_commit_callbacks, mode
):
    manager = user_in(django_user_model, "Manager", "m")
    received = []
    credit = {"credit_amount_minor": 1500} if mode == "push_and_credit" else {}

    def receiver(sender, **kwargs):
        received.append(kwargs)

    billing_hold_released.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            billing_hold_release(
                hold=the_hold, actor=manager, reason="Batch was real", mode=mode, **credit
            )
            assert received == []  # not before the release committed
        with django_capture_on_commit_callbacks(execute=True):
            billing_hold_release(hold=the_hold, actor=manager, reason="Again", mode=mode, **credit)
    finally:
        billing_hold_released.disconnect(receiver)

    (sent,) = received
    assert sent["hold"].pk == the_hold.pk and sent["hold"].status == "released"
    assert sent["mode"] == mode and sent["actor"] == manager and sent["reason"] == "Batch was real"
    assert sent["credit_amount_minor"] == credit.get("credit_amount_minor")
    the_hold.refresh_from_db()
    assert the_hold.release_mode == mode and the_hold.released_by == manager
    last = the_hold.history.order_by("-history_id").first()
    assert last.history_user == manager and "Batch was real" in last.history_change_reason


# --- the 35-day window --------------------------------------------------------------------------


def test_the_oldest_held_usage_is_the_oldest_event_in_the_feed_or_pending_entry(
    account, calls, the_hold
):
    event(account, calls, NOW - timedelta(days=3), 1)
    event(account, calls, NOW - timedelta(days=12), 2)

    oldest = held_usage_oldest_by_account([account.pk])

    assert oldest == {account.pk: NOW - timedelta(days=12)}
    window = hold_window(the_hold, at=NOW)
    assert window.age_days == 12 and window.days_left == 23 and window.warning is False


def test_the_cs_team_is_told_once_when_held_usage_is_older_than_the_setting(
    settings, account, calls, the_hold, django_capture_on_commit_callbacks, mailoutbox
):
    settings.NOTIFY_TEAM_EMAIL = "cs@example.com"
    settings.BILLING_HOLD_WARN_DAYS = 30
    event(account, calls, NOW - timedelta(days=29), 1)

    assert billing_holds_window_warn(at=NOW) == []
    assert not AlertNotification.objects.filter(event_type=HOLD_WINDOW_EVENT).exists()

    event(account, calls, NOW - timedelta(days=31), 2)
    with django_capture_on_commit_callbacks(execute=True):
        warned = billing_holds_window_warn(at=NOW)
    with django_capture_on_commit_callbacks(execute=True):
        again = billing_holds_window_warn(at=NOW + timedelta(hours=1))

    assert warned == [the_hold.pk] and again == []
    (row,) = AlertNotification.objects.filter(event_type=HOLD_WINDOW_EVENT)
    assert row.channel == "email" and row.recipient == "owner@example.com,cs@example.com"
    assert "31 days" in row.payload["body"] and "35-day window" in row.payload["body"]
    (mail,) = mailoutbox
    assert mail.to == ["owner@example.com", "cs@example.com"] and "hold-co" in mail.body
    assert hold_window(the_hold, at=NOW).warning is True


def test_a_lower_setting_warns_earlier_and_a_released_hold_never_warns(
    settings, django_user_model, account, calls, the_hold
):
    settings.BILLING_HOLD_WARN_DAYS = 5
    event(account, calls, NOW - timedelta(days=6), 1)
    billing_hold_release(
        hold=the_hold, actor=user_in(django_user_model, "Manager", "m"), reason="ok"
    )
    assert billing_holds_window_warn(at=NOW) == []

    second = billing_hold_open(account=account, alert=None, at=NOW)
    assert billing_holds_window_warn(at=NOW) == [second.pk]


def test_the_window_task_is_scheduled_hourly(settings, account, calls, the_hold):
    settings.BILLING_HOLD_WARN_DAYS = 2
    event(account, calls, NOW - timedelta(days=3), 1)

    assert alerts_billing_holds_window.apply().get() == [the_hold.pk]
    entry = settings.CELERY_BEAT_SCHEDULE["alerts-billing-holds-window"]
    assert entry["task"] == "alerts.tasks.alerts_billing_holds_window"


def test_the_status_push_backlog_leaves_held_usage_aside(settings, account, calls, the_hold):
    from backoffice.status import OK, push_backlog_check

    settings.STATUS_PUSH_LAG_CRITICAL = 3600
    event(account, calls, NOW - timedelta(hours=1), 1)  # received NOW

    check = push_backlog_check(NOW + timedelta(hours=5))

    assert check["status"] == OK and check["held_accounts"] == 1
    assert check["inbox_rows"] == 0 and check["inbox_oldest_age_seconds"] is None


def test_the_window_is_the_billing_platforms_orbs_grace_period_or_none_for_lago(
    settings, account, calls, the_hold
):
    settings.BILLING_PROVIDER = "orb"
    settings.ORB_GRACE_PERIOD_HOURS = 12
    event(account, calls, NOW - timedelta(hours=11), 1)

    window = hold_window(the_hold, at=NOW)
    assert window.window == "12-hour" and window.warning is True  # 30/35 of 12 h gone
    assert window.deadline == NOW - timedelta(hours=11) + timedelta(hours=12)
    assert billing_holds_window_warn(at=NOW) == [the_hold.pk]
    (mail,) = [n for n in AlertNotification.objects.filter(channel="email")]
    assert "older than its 12-hour window" in mail.payload["body"]

    settings.BILLING_PROVIDER = "lago"  # takes usage of any age: no deadline, no warning
    window = hold_window(the_hold, at=NOW)
    assert (window.window, window.deadline, window.warning) == ("unlimited", None, False)
