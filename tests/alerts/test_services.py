"""The alert lifecycle people drive, and the one-open-alert guarantee."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from alerts.models import Alert, AlertNotification, AlertRule
from alerts.services import (
    alert_acknowledge,
    alert_resolve,
    alert_snooze,
    alerts_evaluate_accounts,
    alerts_evaluate_all,
)
from tests.alerts.factories import AlertFactory, default_rule
from tests.alerts.series import ONE_DAY, TODAY, account, api_meter, at, usage


@pytest.mark.django_db
def test_only_one_unresolved_alert_per_rule_account_meter_and_period_even_without_meter():
    rule = AlertRule.objects.create(
        code="inv", name="inv", kind="invoice", params={"amount_minor": 1}
    )
    first = AlertFactory(rule=rule, meter=None, period_key="2024-03-01")
    with pytest.raises(IntegrityError), transaction.atomic():
        AlertFactory(rule=rule, meter=None, period_key="2024-03-01", account=first.account)
    first.status = Alert.Status.RESOLVED
    first.save()
    AlertFactory(rule=rule, meter=None, period_key="2024-03-01", account=first.account)


@pytest.mark.django_db
def test_resolving_needs_a_reason_and_a_resolved_alert_cannot_be_acknowledged(django_user_model):
    user = django_user_model.objects.create_user("agent")
    alert = AlertFactory()
    with pytest.raises(ValueError):
        alert_resolve(alert=alert, actor=user, reason="  ")
    alert_resolve(alert=alert, actor=user, reason="Known batch job", label="expected")
    with pytest.raises(ValueError):
        alert_acknowledge(alert=alert, actor=user)


@pytest.mark.django_db
def test_a_snoozed_alert_escalates_silently_and_wakes_when_the_snooze_ends(django_user_model):
    user = django_user_model.objects.create_user("agent")
    acct, meter = account(metadata={"cs_owner_email": "cs@example.com"}), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 4000, hour=9)
    alerts_evaluate_all(at=at(TODAY, 10))
    alert = Alert.objects.get()
    alert_snooze(alert=alert, actor=user, until=timezone.now() + dt.timedelta(days=1))
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 8000, hour=11)
    alerts_evaluate_all(at=at(TODAY, 12))
    alert.refresh_from_db()
    assert alert.level == Alert.Level.CRITICAL and alert.status == Alert.Status.SNOOZED
    assert AlertNotification.objects.count() == 1  # the opening only
    # Evaluated as of a time past the snooze: the alert is open again.
    Alert.objects.filter(pk=alert.pk).update(snoozed_until=at(TODAY, 12, 30))
    alerts_evaluate_all(at=at(TODAY, 13))
    alert.refresh_from_db()
    assert alert.status == Alert.Status.OPEN and alert.snoozed_until is None


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_at_the_same_time_open_one_alert():
    acct, meter = account(), api_meter()
    usage(acct, meter, TODAY - 70 * ONE_DAY, TODAY, lambda d: 1000)
    usage(acct, meter, TODAY, TODAY + ONE_DAY, lambda d: 12_000)
    barrier = threading.Barrier(2)
    errors = []

    def evaluate():
        try:
            barrier.wait()
            alerts_evaluate_accounts(account_ids=[acct.pk], at=at(TODAY, 20))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Alert.objects.count() == 1
    assert default_rule("spike").alerts.count() == 1


@pytest.mark.django_db
def test_default_rules_come_back_after_migrate_only_on_a_database_without_rules():
    from alerts.apps import default_rules_ensure

    AlertRule.objects.all().delete()  # what a test runner's flush leaves
    default_rules_ensure()
    assert set(AlertRule.objects.values_list("code", "enabled")) == {
        ("default-spike", True),
        ("default-drop", True),
        ("default-quota", True),
    }
    AlertRule.objects.filter(code="default-drop").delete()  # people removed one
    default_rules_ensure()
    assert not AlertRule.objects.filter(code="default-drop").exists()
