"""`manage.py reconcile` and the Celery tasks: progress, a summary, one recorded run each."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.providers.simulated import FaultSettings
from reconciliation import tasks
from reconciliation.models import Mismatch, ReconciliationRun
from tests.reconciliation.support import (
    account_with_period,
    ingest,
    meters_count_sum_max,
    plan_for,
    push,
    today,
    usage_for,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_accounts(settings):
    settings.BILLING_PROVIDER = "simulated"
    meters = meters_count_sum_max()
    plan = plan_for(meters)
    accounts = []
    for name, end in (
        ("early", today() - timedelta(days=2)),
        ("late", today() + timedelta(days=5)),
    ):
        account, period = account_with_period(
            external_id=name, tz="UTC", plan=plan, start=end - timedelta(days=30), end=end
        )
        # Usage up to an hour ago (the open period's future has none).
        past = timezone.now() - timedelta(hours=1)
        usage = [e for m in meters for e in usage_for(account, m, period, per_day=1)]
        ingest([e for e in usage if e.occurred_at < past])
        accounts.append(account)
    push(FaultSettings(seed=3, drop_rate=Decimal("0.3")))
    return accounts


def test_the_command_reconciles_every_account_with_progress_and_a_summary(two_accounts):
    out = StringIO()

    call_command("reconcile", stdout=out)

    text = out.getvalue()
    assert "[2/2 accounts] 6 cell(s)" in text
    assert "Reconciled 2 account(s), 2 period(s), 6 cell(s)" in text
    assert ReconciliationRun.objects.filter(trigger="command", status="done").count() == 1


def test_the_command_records_one_run_per_account_with_batch_1(two_accounts):
    out = StringIO()

    call_command("reconcile", "--batch", "1", stdout=out)

    assert "[1/2 accounts] 3 cell(s)" in out.getvalue()
    runs = ReconciliationRun.objects.filter(trigger="command")
    assert sorted(r.account.external_id for r in runs) == ["early", "late"]
    assert Mismatch.objects.count() > 0


def test_the_command_takes_an_account_and_a_period_end(two_accounts):
    out = StringIO()

    call_command("reconcile", "--account", "late", "--period-end-before", str(today()), stdout=out)
    assert "Reconciled 1 account(s), 0 period(s)" in out.getvalue()

    with pytest.raises(CommandError, match="Unknown account"):
        call_command("reconcile", "--account", "nobody")


def test_the_nightly_task_fans_out_one_task_per_account(two_accounts, monkeypatch, settings):
    sent = []
    monkeypatch.setattr(tasks.reconcile_account_task, "delay", lambda **kw: sent.append(kw))

    count = tasks.reconcile_all.apply().get()
    run_id = tasks.reconcile_account_task.apply(kwargs=sent[0]).get()
    again = tasks.reconcile_account_task.apply(kwargs=sent[0]).get()

    assert count == 2 and len(sent) == 2
    first, second = (
        ReconciliationRun.objects.get(pk=run_id),
        ReconciliationRun.objects.get(pk=again),
    )
    assert first.trigger == "task" and first.mismatches_opened >= 1
    assert second.mismatches_opened == 0 and second.cells_compared == first.cells_compared
    entry = settings.CELERY_BEAT_SCHEDULE["reconciliation-nightly"]
    assert entry["task"] == "reconciliation.tasks.reconcile_all"
    assert tasks.reconcile_account_task.acks_late
