"""Adjustments: the state machine, four eyes (in the service and in the database), credits
on the projection, usage corrections as correction events, the simulated provider."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from adjustments.models import Adjustment, AdjustmentPolicy
from adjustments.services import (
    Actor,
    AdjustmentError,
    NotPermitted,
    adjustment_apply,
    adjustment_approve,
    adjustment_reject,
    adjustment_request,
    adjustment_withdraw,
    adjustments_expire,
)
from billing.models import SimulatedCredit
from billing.pricing import LineKind
from billing.projection import projected_invoice_build
from billing.providers.base import ProviderError
from billing.services.periods import billing_period_close
from metering.models import UsageEvent
from metering.rollup_selectors import usage_total
from metering.services.api_keys import api_key_create
from metering.services.rollups import rollup_drain
from tests.adjustments.support import role_user, scenario

pytestmark = pytest.mark.django_db
S = Adjustment.Status


@pytest.fixture
def support(django_user_model):
    return Actor(user=role_user(django_user_model, "Support", "sue"))


@pytest.fixture
def manager(django_user_model):
    return Actor(user=role_user(django_user_model, "Manager", "max"))


def credit(s, actor, amount_minor, **kw):
    adjustment, _created = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=amount_minor,
        reason_code=kw.pop("reason_code", "outage_sla"),
        note=kw.pop("note", "API down 3 hours on the 2nd"),
        actor=actor,
        **kw,
    )
    return adjustment


def test_support_credit_within_the_limit_is_applied_at_once_and_shows_on_the_projection(
    support,
):
    s = scenario(per_day=300)  # 300.00 USD so far
    adjustment = credit(s, support, 5000, ticket="ZD-1")

    assert adjustment.status == S.APPLIED
    assert adjustment.within_policy and adjustment.approved_by is None
    assert adjustment.provider_route == "simulated_credit"
    row = SimulatedCredit.objects.get(credit_id=adjustment.provider_credit_id)
    assert (row.amount_minor, row.currency, row.reason_code) == (5000, "USD", "outage_sla")
    invoice = projected_invoice_build(account=s.account)
    credit_line = invoice.lines[-1]
    assert credit_line.kind is LineKind.CREDIT
    assert credit_line.amount_to_date_minor == -5000
    assert invoice.to_date_total_minor == 300_00 - 50_00
    assert adjustment.total_before_minor - adjustment.total_after_minor == 5000
    # Every state change is in the history, with who and why.
    history = list(adjustment.history.order_by("history_id"))
    assert [h.status for h in history] == ["draft", "requested", "approved", "approved", "applied"]
    assert all(h.history_user_id == support.user.pk for h in history)
    assert history[-1].history_change_reason.startswith("Applied at simulated")


def test_credit_above_the_limit_waits_for_a_manager_who_is_not_the_requester(support, manager):
    s = scenario(per_day=300)
    adjustment = credit(s, support, 10001)
    assert adjustment.status == S.REQUESTED
    assert not SimulatedCredit.objects.exists()

    with pytest.raises(NotPermitted):
        adjustment_approve(adjustment=adjustment, actor=support)  # Support cannot approve
    applied = adjustment_approve(adjustment=adjustment, actor=manager)
    assert applied.status == S.APPLIED
    assert applied.approved_by == manager.user
    assert SimulatedCredit.objects.count() == 1


def test_a_manager_cannot_approve_their_own_request_in_the_service_or_the_database(manager):
    s = scenario(per_day=300)
    adjustment = credit(s, manager, 20000)
    assert adjustment.status == S.REQUESTED
    with pytest.raises(NotPermitted):
        adjustment_approve(adjustment=adjustment, actor=manager)
    # Even a direct write is refused by the CHECK constraint.
    with pytest.raises(IntegrityError), transaction.atomic():
        Adjustment.objects.filter(pk=adjustment.pk).update(approved_by=manager.user)


def test_a_credit_never_takes_the_projected_total_below_zero_unless_the_policy_allows(support):
    s = scenario(per_day=30)  # 30.00 USD
    credit(s, support, 8000)
    invoice = projected_invoice_build(account=s.account)
    assert invoice.to_date_total_minor == 0
    assert invoice.lines[-1].amount_to_date_minor == -3000

    AdjustmentPolicy.objects.create(currency="USD", allow_carried_balance=True)
    invoice = projected_invoice_build(account=s.account)
    assert invoice.to_date_total_minor == 30_00 - 80_00


def test_reject_needs_a_reason_and_a_manager_and_ends_the_request(support, manager):
    s = scenario(per_day=300)
    adjustment = credit(s, support, 20000)
    with pytest.raises(AdjustmentError):
        adjustment_reject(adjustment=adjustment, actor=manager, reason=" ")
    with pytest.raises(NotPermitted):
        adjustment_reject(adjustment=adjustment, actor=support, reason="no")
    rejected = adjustment_reject(adjustment=adjustment, actor=manager, reason="Not an outage")
    assert (rejected.status, rejected.rejection_reason) == (S.REJECTED, "Not an outage")
    with pytest.raises(AdjustmentError):
        adjustment_approve(adjustment=rejected, actor=manager)


def test_only_the_requester_withdraws_and_a_withdrawn_request_is_final(support, manager):
    s = scenario(per_day=300)
    adjustment = credit(s, support, 20000)
    with pytest.raises(NotPermitted):
        adjustment_withdraw(adjustment=adjustment, actor=manager)
    withdrawn = adjustment_withdraw(adjustment=adjustment, actor=support)
    assert withdrawn.status == S.WITHDRAWN
    with pytest.raises(AdjustmentError):
        adjustment_approve(adjustment=withdrawn, actor=manager)


def test_a_request_not_decided_in_the_policy_days_expires(support, manager):
    AdjustmentPolicy.objects.create(currency="", tier="", expiry_days=2)
    s = scenario(per_day=300)
    adjustment = credit(s, support, 20000)
    assert adjustment.expires_at == adjustment.submitted_at + dt.timedelta(days=2)
    assert adjustments_expire(now=adjustment.submitted_at + dt.timedelta(days=1)) == 0
    later = adjustment.submitted_at + dt.timedelta(days=2)
    with pytest.raises(AdjustmentError) as exc:
        adjustment_approve(adjustment=adjustment, actor=manager, now=later)
    assert exc.value.code == "expired"
    adjustment.refresh_from_db()
    assert adjustment.status == S.EXPIRED
    assert adjustment.approved_by is None


def test_the_sweep_expires_what_is_due(support):
    s = scenario(per_day=300)
    adjustment = credit(s, support, 20000)
    assert adjustments_expire(now=adjustment.expires_at) == 1
    adjustment.refresh_from_db()
    assert adjustment.status == S.EXPIRED


def test_a_user_without_the_permission_or_a_key_without_adjust_scope_cannot_request(
    django_user_model,
):
    s = scenario(per_day=300)
    for actor in (
        Actor(user=role_user(django_user_model, "Auditor")),
        Actor(user=role_user(django_user_model, None)),
        Actor(api_key=api_key_create(name="reader", scopes=["read"])[0]),
    ):
        with pytest.raises(NotPermitted):
            credit(s, actor, 100)
    assert not Adjustment.objects.exists()


def test_an_api_key_is_its_own_requester_and_its_idempotency_key_answers_the_first(manager):
    s = scenario(per_day=300)
    key, _ = api_key_create(name="backend", scopes=["adjust"])
    actor = Actor(api_key=key)
    first, created = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=20000,
        reason_code="goodwill",
        note="big customer",
        actor=actor,
        idempotency_key="k1",
    )
    again, created_again = adjustment_request(
        account=s.account,
        kind="credit",
        amount_minor=20000,
        reason_code="goodwill",
        note="big customer",
        actor=actor,
        idempotency_key="k1",
    )
    assert (created, created_again, again.pk) == (True, False, first.pk)
    assert first.status == S.REQUESTED and first.requested_by_key == key
    assert adjustment_approve(adjustment=first, actor=manager).status == S.APPLIED


def test_credit_in_another_currency_than_the_account_is_refused(support):
    s = scenario(per_day=300)
    with pytest.raises(AdjustmentError) as exc:
        credit(s, support, 100, currency="EUR")
    assert exc.value.code == "currency_mismatch"


def test_usage_correction_writes_correction_events_that_rollups_and_projection_see(support):
    s = scenario(per_day=100)  # ten events of 10 GB on the first day: 100.00 USD
    day = s.period.start_date
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="usage_correction",
        meter=s.meter,
        day=day,
        corrected_quantity=Decimal("75"),
        reason_code="duplicate_usage",
        note="A retry storm sent events twice",
        actor=support,
    )
    assert adjustment.status == S.APPLIED
    assert adjustment.original_quantity == Decimal(100)
    assert adjustment.corrected_quantity == Decimal(75)
    assert adjustment.price_difference_minor == 25_00
    assert adjustment.provider_route == "usage_push"  # the open period's usage is pushed
    corrections = UsageEvent.objects.filter(pk__in=adjustment.correction_event_ids)
    assert corrections.count() == 3  # two voided, one lowered from 10 to 5
    assert all(e.kind == UsageEvent.Kind.CORRECTION for e in corrections)
    rollup_drain()
    total = usage_total(account=s.account, meter=s.meter, start=day, end=day + dt.timedelta(days=1))
    assert total == Decimal(75)
    assert projected_invoice_build(account=s.account).to_date_total_minor == 75_00


def test_usage_correction_above_the_limit_waits_and_then_corrects(support, manager):
    s = scenario(per_day=500)
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="usage_correction",
        meter=s.meter,
        day=s.period.start_date,
        corrected_quantity=Decimal("250"),
        reason_code="metering_error",
        note="double counted",
        actor=support,
    )
    assert adjustment.status == S.REQUESTED
    assert not UsageEvent.objects.filter(kind=UsageEvent.Kind.CORRECTION).exists()
    applied = adjustment_approve(adjustment=adjustment, actor=manager)
    assert applied.status == S.APPLIED and applied.correction_event_ids


def test_usage_correction_on_an_invoiced_period_credits_the_price_difference(support):
    s = scenario(per_day=100, past=True)
    closed = billing_period_close(period=s.period, now=s.period.ends_at + dt.timedelta(hours=1))
    assert closed.total_minor == 100_00
    adjustment, _ = adjustment_request(
        account=s.account,
        kind="usage_correction",
        meter=s.meter,
        day=s.period.start_date,
        corrected_quantity=Decimal("60"),
        reason_code="metering_error",
        note="Sensor double-reported",
        actor=support,
    )
    assert adjustment.status == S.APPLIED
    assert (adjustment.total_before_minor, adjustment.total_after_minor) == (100_00, 60_00)
    assert adjustment.amount_minor == adjustment.price_difference_minor == 40_00
    row = SimulatedCredit.objects.get()
    assert (row.amount_minor, row.invoice_id) == (40_00, f"sim_in_{s.period.pk}")
    assert UsageEvent.objects.filter(pk__in=adjustment.correction_event_ids).count() == 4


def test_a_provider_failure_is_kept_and_the_adjustment_is_retried(support, monkeypatch):
    s = scenario(per_day=300)
    from billing.providers.simulated import SimulatedProvider

    def refuse(self, credit):
        raise ProviderError("provider down")

    monkeypatch.setattr(SimulatedProvider, "create_credit", refuse)
    adjustment = credit(s, support, 1000)
    assert (adjustment.status, adjustment.provider_error) == (S.FAILED, "provider down")
    monkeypatch.undo()
    retried = adjustment_apply(adjustment=adjustment, actor=support)
    assert retried.status == S.APPLIED and retried.attempts == 2
    assert SimulatedCredit.objects.count() == 1
    # Applying an applied adjustment again is refused: the credit stays single.
    with pytest.raises(AdjustmentError):
        adjustment_apply(adjustment=retried, actor=support)
    assert SimulatedCredit.objects.count() == 1


@pytest.mark.parametrize(("currency", "at_limit"), [("USD", 10000), ("JPY", 100), ("KWD", 100000)])
def test_the_service_applies_up_to_the_limit_in_each_currency_and_holds_one_unit_more(
    support, currency, at_limit
):
    s = scenario(currency=currency, per_day=1000)
    assert credit(s, support, at_limit).status == S.APPLIED
    assert credit(s, support, at_limit + 1).status == S.REQUESTED


def test_a_tier_policy_lowers_the_limit_for_that_tier_only(support):
    AdjustmentPolicy.objects.create(currency="USD", tier="startup", support_limit=Decimal(10))
    startup = scenario(tier="startup", per_day=300)
    other = scenario(tier="enterprise", per_day=300)
    assert credit(startup, support, 1001).status == S.REQUESTED
    assert credit(other, support, 1001).status == S.APPLIED


def test_the_hourly_task_expires_what_is_due(support, settings):
    from adjustments.tasks import adjustments_expire_task

    assert (
        settings.CELERY_BEAT_SCHEDULE["adjustments-expire"]["task"]
        == "adjustments.tasks.adjustments_expire_task"
    )
    s = scenario(per_day=300)
    adjustment = credit(s, support, 20000)
    Adjustment.objects.filter(pk=adjustment.pk).update(expires_at=adjustment.submitted_at)
    assert adjustments_expire_task.delay().get() == 1
    assert adjustments_expire_task.delay().get() == 0
    adjustment.refresh_from_db()
    assert adjustment.status == S.EXPIRED


@pytest.mark.parametrize(
    ("amount", "status"), [(2500, "applied"), (50000, "requested")], ids=["within", "above"]
)
def test_a_hold_released_with_push_and_credit_opens_that_credit_under_the_policy(
    django_user_model, django_capture_on_commit_callbacks, amount, status
):
    from alerts.services import billing_hold_open, billing_hold_release

    s = scenario()
    manager = role_user(django_user_model, "Manager")
    hold = billing_hold_open(account=s.account, alert=None, at=timezone.now())
    for _ in range(2):  # a second release of the same hold opens nothing more
        with django_capture_on_commit_callbacks(execute=True):
            billing_hold_release(
                hold=hold,
                actor=manager,
                reason="The batch was real; goodwill for the shock",
                mode="push_and_credit",
                credit_amount_minor=amount,
            )

    (credit,) = Adjustment.objects.filter(account=s.account)
    assert (credit.kind, credit.amount_minor, credit.currency) == ("credit", amount, "USD")
    assert credit.status == status  # above the 100.00 limit it waits for another Manager
    assert credit.requested_by == manager and credit.ticket == f"billing-hold-{hold.pk}"
    assert "goodwill for the shock" in credit.note
