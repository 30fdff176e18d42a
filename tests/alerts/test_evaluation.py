"""The rules on synthetic series: normal patterns stay quiet, real anomalies fire within one
evaluation, alerts escalate, resolve themselves and are never duplicated."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from alerts.models import Alert, AlertNotification, AlertRule
from alerts.services import alerts_evaluate_all
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, at, jitter, usage, weekly

pytestmark = pytest.mark.django_db

HISTORY_START = TODAY - 70 * ONE_DAY


def open_alerts():
    return list(Alert.objects.exclude(status=Alert.Status.RESOLVED).order_by("pk"))


def test_default_spike_drop_and_quota_rules_are_active_after_migrate():
    rules = {r.code: r for r in AlertRule.objects.all()}
    assert {"default-spike", "default-drop", "default-quota"} <= set(rules)
    assert all(rules[c].enabled and rules[c].scope == "global" for c in rules if "default" in c)
    assert rules["default-spike"].param("multiple") == 3


def test_weekly_seasonality_does_not_fire_on_weekdays_or_weekends():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY + 5 * ONE_DAY, weekly)
    for offset in range(5):  # Wednesday to Sunday, each evaluated late in the day
        alerts_evaluate_all(at=at(TODAY + offset * ONE_DAY, 23))
    assert open_alerts() == []


def test_a_monday_after_a_quiet_weekend_does_not_fire():
    acct, meter = account(), api_meter()
    monday = dt.date(2024, 3, 18)
    usage(acct, meter, HISTORY_START, monday + ONE_DAY, lambda d: 0 if d.weekday() >= 5 else 1000)
    alerts_evaluate_all(at=at(monday, 8))  # before Monday's usage: 68 h of silence
    alerts_evaluate_all(at=at(monday, 23))  # after it: a thousand calls after a zero weekend
    assert open_alerts() == []


def test_steady_growth_does_not_fire():
    acct, meter = account(), api_meter()
    usage(
        acct,
        meter,
        HISTORY_START,
        TODAY + ONE_DAY,
        lambda d: int(1000 * Decimal("1.02") ** (d - HISTORY_START).days),
    )
    alerts_evaluate_all(at=at(TODAY, 23))
    assert open_alerts() == []


def test_one_old_spike_in_the_history_does_not_move_the_baseline():
    acct, meter = account(), api_meter()
    old_spike = TODAY - 21 * ONE_DAY  # a Wednesday, like today

    def series(day):
        return 20_000 if day == old_spike else jitter(day, 1000)

    usage(acct, meter, HISTORY_START, TODAY + ONE_DAY, series)
    alerts_evaluate_all(at=at(TODAY, 23))
    assert open_alerts() == []


def test_a_new_account_gets_no_relative_alerts():
    acct, meter = account(), api_meter()
    usage(acct, meter, TODAY - 10 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 10_000)
    alerts_evaluate_all(at=at(TODAY, 23))
    assert open_alerts() == []


def test_history_counts_from_the_first_day_with_usage_not_account_creation():
    # The account row is created today (after a backfill of 10 weeks): it has history.
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: jitter(d, 1000))
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 10_000)
    alerts_evaluate_all(at=at(TODAY, 23))
    assert [a.kind for a in open_alerts()] == ["spike"]


def test_a_ten_times_day_fires_a_critical_spike_with_context_and_drivers():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: {"/v1/items": 800, "/v1/search": 200})
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: {"/v1/items": 800, "/v1/search": 9_200})
    run = alerts_evaluate_all(at=at(TODAY, 13))
    (alert,) = open_alerts()
    assert run.opened == [alert.pk]
    assert (alert.kind, alert.level, alert.meter, alert.account) == (
        "spike",
        Alert.Level.CRITICAL,
        meter,
        acct,
    )
    assert alert.observed == 10_000 and alert.baseline == 1000 and alert.multiple == 10
    assert alert.band_high == 1000  # no spread in a flat history
    assert alert.drivers[0]["value"] == "/v1/search"
    assert alert.drivers[0]["increase"] == "9000"
    # This period (the local month, without a subscription): March 1-20.
    assert alert.period_usage == 19 * 1000 + 10_000
    assert alert.previous_period_usage == 29 * 1000  # February 2024
    assert "10.00x" in alert.message


def test_a_partial_day_compares_so_far_with_a_whole_normal_day():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 1500, hour=9)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 2000, hour=15)
    alerts_evaluate_all(at=at(TODAY, 12))  # 1,500 so far: no spike, no drop
    assert open_alerts() == []
    alerts_evaluate_all(at=at(TODAY, 16))  # 3,500 so far: 3.5x a whole normal day
    (alert,) = open_alerts()
    assert alert.level == Alert.Level.WARNING and alert.observed == 3500


def test_spike_escalates_from_warning_to_critical_with_a_new_notification():
    acct, meter = account(metadata={"cs_owner_email": "cs@example.com"}), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 4000, hour=9)
    alerts_evaluate_all(at=at(TODAY, 10))
    (alert,) = open_alerts()
    assert alert.level == Alert.Level.WARNING
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 8000, hour=14)
    run = alerts_evaluate_all(at=at(TODAY, 15))
    (escalated,) = open_alerts()
    assert escalated.pk == alert.pk and escalated.level == Alert.Level.CRITICAL
    assert run.escalated == [alert.pk]
    sent = list(AlertNotification.objects.order_by("pk"))
    assert [(n.channel, n.recipient, n.idempotency_key) for n in sent] == [
        ("email", "cs@example.com", f"alert:{alert.pk}:level:1"),
        ("email", "cs@example.com", f"alert:{alert.pk}:level:2"),
    ]
    assert {h.history_change_reason for h in escalated.history.all()} >= {
        "Opened by rule default-spike",
        "Escalated to critical",
    }


def test_rerunning_an_evaluation_never_duplicates_alerts_or_notifications():
    acct, meter = account(metadata={"cs_owner_email": "cs@example.com"}), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    for _ in range(3):
        alerts_evaluate_all(at=at(TODAY, 20))
    alerts_evaluate_all(at=at(TODAY, 21))
    assert Alert.objects.count() == 1
    assert AlertNotification.objects.count() == 1


def test_an_alert_resolves_itself_once_cleared_for_the_configured_time():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    usage(acct, meter, TODAY + ONE_DAY, TODAY + 3 * ONE_DAY, lambda d: 1000)
    alerts_evaluate_all(at=at(TODAY, 20))
    (alert,) = open_alerts()
    alerts_evaluate_all(at=at(TODAY + ONE_DAY, 20))  # a normal day: cleared, not yet resolved
    alert.refresh_from_db()
    assert alert.status == Alert.Status.OPEN and alert.cleared_since == at(TODAY + ONE_DAY, 20)
    run = alerts_evaluate_all(at=at(TODAY + 2 * ONE_DAY, 20))  # cleared for 24 h
    alert.refresh_from_db()
    assert run.resolved == [alert.pk]
    assert alert.status == Alert.Status.RESOLVED and alert.resolved_at == at(
        TODAY + 2 * ONE_DAY, 20
    )


def test_a_condition_that_returns_before_resolution_keeps_the_same_alert():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    alerts_evaluate_all(at=at(TODAY, 20))
    alerts_evaluate_all(at=at(TODAY + ONE_DAY, 2))  # cleared (a new day, little usage)
    usage(acct, meter, TODAY + ONE_DAY, TODAY + 2 * ONE_DAY, lambda d: 12_000, hour=3)
    alerts_evaluate_all(at=at(TODAY + ONE_DAY, 4))
    (alert,) = Alert.objects.all()
    assert alert.status == Alert.Status.OPEN and alert.cleared_since is None


def test_a_drop_to_zero_fires_after_48_hours_of_silence():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY - ONE_DAY, lambda d: jitter(d, 1000), hour=12)
    # Last usage: two days ago at 12:00. 44 h later: not yet.
    alerts_evaluate_all(at=at(TODAY, 8))
    assert open_alerts() == []
    alerts_evaluate_all(at=at(TODAY, 14))  # 50 h
    (alert,) = open_alerts()
    assert (alert.kind, alert.level, alert.observed) == ("drop", Alert.Level.CRITICAL, 0)
    assert "no usage for 48 h" in alert.message


def test_the_morning_after_a_normal_day_is_no_drop():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY, lambda d: jitter(d, 1000), hour=20)
    alerts_evaluate_all(at=at(TODAY, 7))  # nothing yet today
    assert open_alerts() == []


def test_usage_far_below_its_weekday_band_for_two_complete_days_warns():
    acct, meter = account(), api_meter()
    usage(acct, meter, HISTORY_START, TODAY - 2 * ONE_DAY, lambda d: 1000)
    usage(acct, meter, TODAY - 2 * ONE_DAY, TODAY + ONE_DAY, lambda d: 30, hour=1)
    alerts_evaluate_all(at=at(TODAY, 6))
    (alert,) = open_alerts()
    assert (alert.kind, alert.level, alert.observed) == ("drop", Alert.Level.WARNING, 30)


def test_quota_warns_at_80_percent_and_escalates_at_100_percent_of_the_account_limit():
    acct = account(metadata={"limits": {"api_calls": 10_000}})
    meter = api_meter()
    first = TODAY.replace(day=1)
    usage(acct, meter, first, TODAY, lambda d: 450)  # 19 days: 8,550 = 85.5%
    alerts_evaluate_all(at=at(TODAY, 1))
    (alert,) = open_alerts()
    assert (alert.kind, alert.level, alert.period_key) == ("quota", Alert.Level.WARNING, "2024-03")
    assert alert.limit == 10_000 and alert.period_usage == 8550
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 2000, hour=2)
    alerts_evaluate_all(at=at(TODAY, 3))
    (alert,) = open_alerts()
    assert alert.level == Alert.Level.CRITICAL and alert.period_usage == 10_550


def test_a_disabled_account_rule_switches_the_global_rule_off_for_that_account():
    acct, meter = account(), api_meter()
    AlertRule.objects.create(
        code="quiet", name="quiet", kind="spike", scope="account", account=acct, enabled=False
    )
    usage(acct, meter, HISTORY_START, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    alerts_evaluate_all(at=at(TODAY, 20))
    assert open_alerts() == []


def test_quota_as_of_a_past_time_counts_the_period_up_to_that_time():
    acct = account(metadata={"limits": {"api_calls": 10_000}})
    meter = api_meter()
    usage(acct, meter, TODAY.replace(day=1), TODAY, lambda d: 400)  # 7,600 by yesterday
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 500, hour=9)  # 8,100 at 09:00
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 2000, hour=15)  # 10,100 at 15:00
    alerts_evaluate_all(at=at(TODAY, 12))
    (alert,) = open_alerts()
    assert (alert.level, alert.period_usage) == (Alert.Level.WARNING, 8100)
    alerts_evaluate_all(at=at(TODAY, 16))
    (alert,) = open_alerts()
    assert (alert.level, alert.period_usage) == (Alert.Level.CRITICAL, 10_100)
