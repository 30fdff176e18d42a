"""The projected-invoice rule, billing holds, the backtest and the commands."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command

from alerts import notify
from alerts.models import Alert, AlertNotification, AlertRule, BillingHold
from alerts.selectors import account_on_hold
from alerts.services import alerts_evaluate_all, billing_hold_release
from billing.projection import projected_invoice_build
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, at, usage
from tests.billing.projection_scenarios import count_scenario, count_usage

pytestmark = pytest.mark.django_db

MARCH_1 = dt.date(2024, 3, 1)


def invoice_rule(**fields) -> AlertRule:
    return AlertRule.objects.create(
        code="invoice-2000",
        name="Projected invoice over $2,000",
        kind="invoice",
        params={"amount_minor": 200_000},
        **fields,
    )


def test_a_projected_invoice_crossing_fires_within_one_evaluation():
    scenario = count_scenario(started=MARCH_1, now=at(TODAY, 20))
    rule = invoice_rule(notify_customer=True)
    count_usage(scenario.account, scenario.meter, MARCH_1, TODAY, lambda d: 100)
    alerts_evaluate_all(at=at(TODAY, 20))  # $50 a day: about $1,550 projected
    assert not Alert.objects.filter(kind="invoice").exists()
    count_usage(scenario.account, scenario.meter, TODAY, TODAY + ONE_DAY, lambda d: 2000, hour=13)
    alerts_evaluate_all(at=at(TODAY, 20))
    alert = Alert.objects.get(kind="invoice")
    expected = projected_invoice_build(account=scenario.account, now=at(TODAY, 20))
    assert alert.rule == rule and alert.level == Alert.Level.WARNING
    assert alert.projected_invoice_minor == expected.projected_total_minor
    assert alert.projected_invoice_minor >= 200_000
    assert alert.currency == "USD" and alert.period_key == "2024-03-01"
    (webhook,) = AlertNotification.objects.filter(channel="webhook")
    assert webhook.event_type == "invoice.projected_threshold"
    assert webhook.recipient == f"account:{scenario.account.pk}"
    assert webhook.payload["projected_invoice_minor"] == alert.projected_invoice_minor
    assert webhook.handed_over is True  # into the notifications outbox, in the same transaction


def test_a_customer_webhook_enters_the_outbox_in_the_alerts_own_transaction(
    django_capture_on_commit_callbacks,
):
    from notifications.models import WebhookDelivery
    from notifications.services import webhook_endpoint_upsert

    scenario = count_scenario(started=MARCH_1, now=at(TODAY, 20))
    invoice_rule(notify_customer=True)
    webhook_endpoint_upsert(
        owner_key=notify.owner_key(scenario.account.pk),
        name="ops",
        url="https://hooks.example.com/meterops",
        event_types=["invoice.projected_threshold"],
        enabled=True,
    )
    count_usage(scenario.account, scenario.meter, MARCH_1, TODAY + ONE_DAY, lambda d: 2000)

    # The on-commit callbacks are captured, not run: as if the process died right after commit.
    with django_capture_on_commit_callbacks(execute=False):
        alerts_evaluate_all(at=at(TODAY, 20))

    (delivery,) = WebhookDelivery.objects.all()
    assert delivery.event_type == "invoice.projected_threshold"
    assert AlertNotification.objects.get(channel="webhook").handed_over is True


def test_a_hold_rule_holds_billing_until_a_manager_releases_it(django_user_model):
    scenario = count_scenario(started=MARCH_1, now=at(TODAY, 20))
    AlertRule.objects.create(
        code="invoice-hold",
        name="hold",
        kind="invoice",
        params={"amount_minor": 50_000, "critical_factor": 2},
        hold=True,
    )
    count_usage(scenario.account, scenario.meter, MARCH_1, TODAY + ONE_DAY, lambda d: 100)
    run = alerts_evaluate_all(at=at(TODAY, 20))  # ~$1,550 projected: past 2 x $500
    (hold,) = BillingHold.objects.all()
    assert run.holds == [hold.pk] and account_on_hold(scenario.account.pk)
    assert AlertNotification.objects.filter(event_type="account.billing_hold").count() == 1
    alerts_evaluate_all(at=at(TODAY, 21))
    assert BillingHold.objects.count() == 1
    manager = django_user_model.objects.create_user("manager")
    manager.groups.add(Group.objects.get(name="Manager"))
    billing_hold_release(hold=hold, actor=manager, reason="Customer confirmed the batch")
    assert not account_on_hold(scenario.account.pk)


def test_notify_is_a_logged_no_op_without_the_notifications_app(
    caplog, django_capture_on_commit_callbacks, monkeypatch
):
    # The notifications app is installed now; this is the deployment without it.
    monkeypatch.setattr(notify, "transports", lambda: None)
    acct, meter = account(metadata={"cs_owner_email": "cs@example.com"}), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    with (
        caplog.at_level("INFO", logger="alerts.notify"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        alerts_evaluate_all(at=at(TODAY, 20))
    (row,) = AlertNotification.objects.all()
    assert row.channel == "email" and not row.handed_over
    assert "notifications app absent: email usage.spike not sent" in caplog.text


def test_notify_hands_requests_to_the_notifications_services_when_installed(
    monkeypatch, django_capture_on_commit_callbacks
):
    calls = []

    class FakeServices:
        @staticmethod
        def email_notify(*, to, subject, body):
            calls.append(("email", to, subject))

    monkeypatch.setattr(notify, "transports", lambda: FakeServices)
    acct, meter = account(metadata={"cs_owner_email": "cs@example.com"}), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    with django_capture_on_commit_callbacks(execute=True):
        alerts_evaluate_all(at=at(TODAY, 20))
    assert calls == [("email", ["cs@example.com"], calls[0][2])]
    assert "Usage spike opened" in calls[0][2]
    assert AlertNotification.objects.get().handed_over


def test_backtest_prints_the_days_a_rule_would_have_fired_and_writes_nothing():
    acct, meter = account(external_id="acme"), api_meter()
    spike_day = TODAY - 3 * ONE_DAY
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 12_000 if d == spike_day else 1000)
    out = StringIO()
    call_command(
        "alerts_backtest",
        since=(TODAY - 5 * ONE_DAY).isoformat(),
        until=(TODAY - ONE_DAY).isoformat(),
        rule="default-spike",
        stdout=out,
    )
    text = out.getvalue()
    assert f"{spike_day.isoformat()}: 1 alerts" in text
    assert "default-spike spike critical acme api_calls" in text
    assert f"{(spike_day - ONE_DAY).isoformat()}: 0 alerts" in text
    assert Alert.objects.count() == 0 and AlertNotification.objects.count() == 0


def test_backtest_can_replay_a_disabled_rule():
    acct, meter = account(), api_meter()
    AlertRule.objects.filter(code="default-spike").update(enabled=False)
    usage(
        acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 12_000 if d == TODAY - ONE_DAY else 900
    )
    out = StringIO()
    call_command(
        "alerts_backtest",
        since=(TODAY - ONE_DAY).isoformat(),
        until=(TODAY - ONE_DAY).isoformat(),
        rule="default-spike",
        stdout=out,
    )
    assert ": 1 alerts" in out.getvalue()


def test_evaluate_alerts_command_evaluates_as_of_a_time():
    acct, meter = account(), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    out = StringIO()
    call_command("evaluate_alerts", at="2024-03-20T20:00:00Z", stdout=out)
    assert "1 opened" in out.getvalue()
    assert Alert.objects.get().opened_at == at(TODAY, 20)


def test_the_beat_task_fans_out_slices_that_evaluate(settings):
    from alerts import tasks

    acct, meter = account(), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    assert "alerts-evaluate" in settings.CELERY_BEAT_SCHEDULE
    assert tasks.alerts_evaluate.delay().get() == 1


def test_invoice_rule_fires_at_a_multiple_of_the_previous_period():
    feb_1 = dt.date(2024, 2, 1)
    scenario = count_scenario(started=feb_1, now=at(TODAY, 20))
    AlertRule.objects.create(
        code="invoice-x1.5", name="1.5x", kind="invoice", params={"multiple": 1.5}
    )
    count_usage(scenario.account, scenario.meter, feb_1, TODAY, lambda d: 100)
    alerts_evaluate_all(at=at(TODAY, 20))
    assert not Alert.objects.filter(kind="invoice").exists()
    count_usage(scenario.account, scenario.meter, TODAY, TODAY + ONE_DAY, lambda d: 1500, hour=13)
    alerts_evaluate_all(at=at(TODAY, 20))
    alert = Alert.objects.get(kind="invoice")
    expected = projected_invoice_build(account=scenario.account, now=at(TODAY, 20))
    assert alert.previous_invoice_minor == expected.previous.total_minor == 29 * 100 * 50
    assert alert.projected_invoice_minor == expected.projected_total_minor
    assert alert.projected_invoice_minor >= 1.5 * alert.previous_invoice_minor
    assert alert.baseline == int(1.5 * alert.previous_invoice_minor)  # the threshold crossed


def test_quota_uses_the_plans_included_units_without_an_account_limit():
    from tests.billing.projection_scenarios import api_calls_scenario, sum_usage

    scenario = api_calls_scenario(now=at(TODAY, 20), started=MARCH_1)  # 1M calls included
    sum_usage(scenario.account, scenario.meter, MARCH_1, TODAY, lambda d: {"/v1/search": 45_000})
    alerts_evaluate_all(at=at(TODAY, 20))  # 19 x 45,000 = 855,000: 85.5%
    alert = Alert.objects.get(kind="quota")
    assert (alert.level, alert.limit, alert.period_usage) == (
        Alert.Level.WARNING,
        1_000_000,
        855_000,
    )
    assert alert.period_key == "2024-03-01"
