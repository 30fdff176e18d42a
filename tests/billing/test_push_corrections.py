"""Corrections pushed against what the provider holds for the original, whatever became of
the original's entry (issue 4, defect 5). The real Stripe adapter against the fake Stripe."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import PushLedgerEntry
from billing.services.push import ledger_retry_failed, push_ledger_enqueue, usage_push
from metering.models import Meter
from tests.billing.test_push import crash_after_answer, hours_ago, make_event, stripe_total
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status


@pytest.fixture
def account():
    return AccountFactory(external_id="corr-acme", name="Acme")


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


def entry_of(event) -> PushLedgerEntry:
    return PushLedgerEntry.objects.get(event_id=event.pk)


def test_original_acknowledged_the_correction_sends_the_difference(fake, account, storage):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    usage_push()
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)

    usage_push()

    assert entry_of(correction).value == Decimal("-3")
    assert stripe_total(fake, account, storage) == Decimal(7)


def test_original_still_pending_and_never_sent_is_replaced_by_the_full_value(
    fake, account, storage
):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)

    usage_push()  # both enqueued in the same run: the original was never sent

    assert entry_of(original).status == Status.SUPERSEDED
    assert entry_of(correction).value == Decimal("7")
    assert entry_of(correction).status == Status.ACKNOWLEDGED
    assert stripe_total(fake, account, storage) == Decimal(7)
    assert fake.count_identifier(entry_of(original).identifier) == 0


@pytest.mark.parametrize("status", [Status.REJECTED, Status.TOO_OLD, Status.SUPERSEDED])
def test_original_never_held_by_the_provider_the_correction_sends_the_full_value(
    fake, account, storage, status
):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    push_ledger_enqueue(provider_name="stripe")
    PushLedgerEntry.objects.update(status=status)  # e.g. refused by Stripe
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)

    usage_push()

    assert entry_of(correction).value == Decimal("7")
    assert entry_of(correction).response["result"] == "recorded"
    assert stripe_total(fake, account, storage) == Decimal(7)  # not 7 - 10


def test_original_too_old_the_correction_is_too_old_as_well(fake, account, storage):
    original = make_event(account, storage, Decimal("10"), hours_ago(36 * 24))
    usage_push()
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)

    usage_push()

    assert entry_of(original).status == Status.TOO_OLD
    assert entry_of(correction).status == Status.TOO_OLD
    assert stripe_total(fake, account, storage) == Decimal(0)


def test_original_attempted_with_no_answer_yet_the_correction_waits_then_sends_the_difference(
    fake, account, storage, monkeypatch
):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    crash_after_answer(monkeypatch)
    with pytest.raises(Exception, match="killed"):
        usage_push()  # Stripe holds 10; our ledger does not know yet
    monkeypatch.undo()
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)
    # A run that only settles corrections: the original's answer is still unknown.
    from django.utils import timezone

    from billing.services.push.corrections import push_corrections_settle

    settled, waiting = push_corrections_settle(provider_name="stripe", now=timezone.now())
    push_ledger_enqueue(provider_name="stripe")
    settled, waiting = push_corrections_settle(provider_name="stripe", now=timezone.now())

    assert (settled, waiting) == (0, 1)
    assert "waiting_for_original" in entry_of(correction).response

    usage_push()  # the original is resent (replayed: counted once), then the correction

    assert entry_of(original).status == Status.ACKNOWLEDGED
    assert entry_of(correction).value == Decimal("-3")
    assert stripe_total(fake, account, storage) == Decimal(7)


def test_original_failed_the_correction_waits_for_a_person_then_follows_their_choice(
    fake, account, storage
):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    push_ledger_enqueue(provider_name="stripe")
    PushLedgerEntry.objects.update(status=Status.FAILED, attempts=20, first_sent_at=hours_ago(1))
    correction = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)

    first = usage_push()

    assert first.corrections_waiting == 1
    assert entry_of(correction).status == Status.PENDING
    assert stripe_total(fake, account, storage) == Decimal(0)

    ledger_retry_failed(entry_ids=[entry_of(original).pk], actor=None)
    usage_push()  # the original goes first, then the correction, as a difference

    assert entry_of(original).status == Status.ACKNOWLEDGED
    assert entry_of(correction).value == Decimal("-3")
    assert stripe_total(fake, account, storage) == Decimal(7)


def test_a_chain_of_corrections_over_a_rejected_original_ends_with_the_last_value(
    fake, account, storage
):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    push_ledger_enqueue(provider_name="stripe")
    PushLedgerEntry.objects.update(status=Status.REJECTED)
    first = make_event(account, storage, Decimal("7"), original.occurred_at, corrects=original)
    usage_push()
    second = make_event(account, storage, Decimal("8.5"), original.occurred_at, corrects=first)

    usage_push()

    assert entry_of(first).value == Decimal("7")
    assert entry_of(second).value == Decimal("1.5")
    assert stripe_total(fake, account, storage) == Decimal("8.5")


def test_voiding_an_event_the_provider_never_got_sends_nothing(fake, account, storage):
    original = make_event(account, storage, Decimal("10"), hours_ago(2))
    make_event(account, storage, None, original.occurred_at, corrects=original)

    usage_push()

    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.SUPERSEDED}
    assert fake.calls("/v1/billing/meter_events") == []
    assert stripe_total(fake, account, storage) == Decimal(0)


def test_a_count_meter_correction_of_an_unsent_event_counts_one(fake, account):
    calls = MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)
    original = make_event(account, calls, Decimal(1), hours_ago(2))
    push_ledger_enqueue(provider_name="stripe")
    PushLedgerEntry.objects.update(status=Status.REJECTED)
    make_event(account, calls, Decimal(1), original.occurred_at, corrects=original)

    usage_push()

    assert stripe_total(fake, account, calls) == Decimal(1)
