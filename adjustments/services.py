"""Writes of adjustments: request, approve, reject, withdraw, apply (and retry), expire.

The one write path for Adjustment. The four-eyes policy is enforced here, whoever calls (the
admin, the API, a shell): a caller is a staff user (with Django permissions) or an API key
(scope `adjust`, its own requester). Within the policy's limit a request is approved by the
policy and applied at once; above it, it waits as `requested` for a Manager who is not the
requester (the database refuses an approver equal to the requester as well).

Applying reaches the billing provider exactly once: the request carries an idempotency key
derived from the adjustment (`mo-<installation>-adjustment-<id>-credit`), and usage
correction events are written, once, before the provider is called. A crash after the
provider answered and before we stored its id leaves the adjustment `approved` (or
`failed`); applying again sends the same key, the provider replays its first answer, and that
id is stored: one credit, whatever the number of attempts.

Every save sets the acting user (none for an API key, whose id is on the row and in the
reason) and a reason, so the history rows (and the audit log built from them) say who did
what and why.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from adjustments.models import Adjustment, ReasonCode
from adjustments.policy import Policy, expires_at, policy_for, within_limit
from billing.models import BillingPeriod, ProviderInvoice
from billing.periods import local_midnight_utc
from billing.pricing import price_invoice
from billing.projection import ProjectionUnavailable, credit_off, projected_invoice_build
from billing.providers import get_provider
from billing.providers.base import CreditRequest, ProviderError
from billing.selectors import period_containing, period_open, period_usage, plan_prices
from metering.models import Account, ApiKey, Meter, UsageEvent
from metering.services.corrections import usage_event_correct

S = Adjustment.Status
CHANGE_REASON_MAX = 100


logger = logging.getLogger(__name__)


class AdjustmentError(ValueError):
    """The adjustment cannot be made as asked; `code` is stable, the message says why."""

    code = "invalid_adjustment"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class NotPermitted(AdjustmentError):
    code = "not_permitted"


@dataclass(frozen=True)
class Actor:
    """Who acts: a staff user or an API key (never both)."""

    user: object | None = None
    api_key: ApiKey | None = None

    @property
    def label(self) -> str:
        if self.api_key is not None:
            return f"api_key:{self.api_key.prefix}"
        if self.user is not None:
            return self.user.get_username()
        return "system"

    def may(self, permission: str) -> bool:
        if self.api_key is not None:
            # An API key with the `adjust` scope requests and applies within the policy; it
            # never approves anything (approval is a Manager's, in the admin).
            return permission in ("request", "apply") and self.api_key.has_scope("adjust")
        if self.user is None:
            return False
        return self.user.is_active and self.user.has_perm(f"adjustments.{permission}_adjustment")


def _save(adjustment: Adjustment, *, actor: Actor, reason: str, fields=None) -> None:
    adjustment._history_user = actor.user
    prefix = f"[{actor.api_key.prefix}] " if actor.api_key is not None else ""
    adjustment._change_reason = (prefix + reason)[:CHANGE_REASON_MAX]
    adjustment.save(update_fields=fields)


# --- the numbers -----------------------------------------------------------------------------


def _priced_total(period: BillingPeriod, quantities: dict[str, Decimal]) -> int:
    plan = period.subscription.plan
    return price_invoice(
        lines=[
            (spec, quantities.get(price.meter.code, Decimal(0)))
            for price, spec in plan_prices(plan=plan)
        ],
        currency=period.currency,
        flat_fee_minor=plan.flat_fee_minor,
        minimum_commitment_minor=plan.minimum_commitment_minor,
    ).total_minor


def _effective_events(*, account: Account, meter: Meter, start: dt.datetime, end: dt.datetime):
    """The events that count over [start, end): not replaced by a correction, not void."""
    return (
        UsageEvent.objects.filter(
            account=account, meter=meter, occurred_at__gte=start, occurred_at__lt=end
        )
        .exclude(value__isnull=True)
        .exclude(Exists(UsageEvent.objects.filter(corrects=OuterRef("pk"))))
        .order_by("-occurred_at", "-pk")
    )


def _usage_between(*, account: Account, meter: Meter, start, end) -> Decimal:
    events = _effective_events(account=account, meter=meter, start=start, end=end)
    if meter.aggregation == Meter.Aggregation.COUNT:
        return Decimal(events.count())
    return sum((e.value for e in events), Decimal(0))


def _correction_range(
    *, account: Account, period: BillingPeriod, day: dt.date | None
) -> tuple[dt.datetime, dt.datetime]:
    if day is None:
        return period.starts_at, period.ends_at
    return local_midnight_utc(day, account.timezone), local_midnight_utc(
        day + dt.timedelta(days=1), account.timezone
    )


def _period_for(
    *, account: Account, period_start: dt.date | None, day: dt.date | None, now: dt.datetime
) -> BillingPeriod:
    if period_start is not None:
        period = (
            BillingPeriod.objects.filter(account=account, start_date=period_start)
            .select_related("subscription__plan")
            .first()
        )
        if period is None:
            raise AdjustmentError(
                f"Account {account.external_id} has no billing period starting {period_start}.",
                "unknown_period",
            )
        if day is not None and not (period.start_date <= day < period.end_date):
            raise AdjustmentError(f"{day} is not in the period starting {period_start}.")
        return period
    if day is not None:
        period = period_containing(account=account, at=local_midnight_utc(day, account.timezone))
    else:
        period = period_open(account=account, at=now)
    if period is None:
        raise AdjustmentError(
            f"Account {account.external_id} has no billing period "
            + (f"on {day}." if day else "open now."),
            "unknown_period",
        )
    return period


def _total_before(period: BillingPeriod) -> int:
    """The invoice the adjustment changes: the billed total of a closed period, else the
    projected total at period end (the usage priced so far when no projection can be made)."""
    if period.state == BillingPeriod.State.CLOSED and period.total_minor is not None:
        return period.total_minor
    try:
        invoice = projected_invoice_build(account=period.account)
        if invoice.period_id == period.pk:
            return invoice.projected_total_minor
    except (ProjectionUnavailable, ValueError):
        pass
    return _priced_total(period, period_usage(period=period))


@dataclass(frozen=True)
class Preview:
    """The invoice (or projection) before and after, shown before submitting."""

    period: BillingPeriod
    currency: str
    total_before_minor: int
    total_after_minor: int
    amount_minor: int
    original_quantity: Decimal | None = None
    corrected_quantity: Decimal | None = None
    price_difference_minor: int | None = None
    policy: Policy | None = None
    needs_approval: bool = False


def adjustment_preview(
    *,
    account: Account,
    kind: str,
    amount_minor: int | None = None,
    meter: Meter | None = None,
    period_start: dt.date | None = None,
    day: dt.date | None = None,
    corrected_quantity: Decimal | None = None,
    now: dt.datetime | None = None,
) -> Preview:
    """What the adjustment would do, computed without writing anything. Raises
    AdjustmentError when it cannot be made."""
    now = now or timezone.now()
    policy = policy_for(currency=account.currency, tier=account.tier)
    period = _period_for(account=account, period_start=period_start, day=day, now=now)
    if period.currency != account.currency:
        raise AdjustmentError("The period's currency is not the account's.")
    before = _total_before(period)
    if kind == Adjustment.Kind.CREDIT:
        if not isinstance(amount_minor, int) or isinstance(amount_minor, bool):
            raise AdjustmentError("amount_minor is an integer number of minor units.")
        if amount_minor <= 0:
            raise AdjustmentError("A credit is a positive amount of minor units.")
        after = before - credit_off(
            total_minor=before,
            credit_minor=amount_minor,
            allow_carried_balance=policy.allow_carried_balance,
        )
        return Preview(
            period=period,
            currency=account.currency,
            total_before_minor=before,
            total_after_minor=after,
            amount_minor=amount_minor,
            policy=policy,
            needs_approval=not within_limit(
                amount_minor=amount_minor, currency=account.currency, policy=policy
            ),
        )
    if kind != Adjustment.Kind.USAGE_CORRECTION:
        raise AdjustmentError("kind is credit or usage_correction.")
    if meter is None:
        raise AdjustmentError("A usage correction names the meter.")
    if meter.aggregation not in (Meter.Aggregation.COUNT, Meter.Aggregation.SUM):
        raise AdjustmentError(
            f"Only count and sum meters can be corrected here ({meter.code} is "
            f"{meter.aggregation}); correct its events one by one instead.",
            "unsupported_meter",
        )
    if corrected_quantity is None or not isinstance(corrected_quantity, Decimal):
        raise AdjustmentError("A usage correction gives corrected_quantity (a decimal).")
    if not corrected_quantity.is_finite() or corrected_quantity < 0:
        raise AdjustmentError("corrected_quantity is a number of at least 0.")
    prices = {price.meter_id for price, _ in plan_prices(plan=period.subscription.plan)}
    if meter.pk not in prices:
        raise AdjustmentError(f"The period's plan does not price {meter.code}.")
    start, end = _correction_range(account=account, period=period, day=day)
    original = _usage_between(account=account, meter=meter, start=start, end=end)
    if corrected_quantity == original:
        raise AdjustmentError(f"The usage is already {original}: nothing to correct.")
    if corrected_quantity > original and (
        period.state != BillingPeriod.State.OPEN or meter.aggregation == Meter.Aggregation.COUNT
    ):
        raise AdjustmentError(
            "A usage correction can raise usage only on an open period's sum meter (it "
            "corrects existing events; it does not invent new ones).",
            "correction_raises_usage",
        )
    if meter.aggregation == Meter.Aggregation.COUNT and corrected_quantity != int(
        corrected_quantity
    ):
        raise AdjustmentError("A count meter's corrected quantity is a whole number.")
    quantities = period_usage(period=period)
    priced_before = _priced_total(period, quantities)
    corrected = dict(quantities)
    corrected[meter.code] = quantities.get(meter.code, Decimal(0)) + corrected_quantity - original
    priced_after = _priced_total(period, corrected)
    difference = priced_before - priced_after
    return Preview(
        period=period,
        currency=account.currency,
        total_before_minor=before,
        total_after_minor=before - difference,
        amount_minor=max(difference, 0),
        original_quantity=original,
        corrected_quantity=corrected_quantity,
        price_difference_minor=difference,
        policy=policy,
        needs_approval=not within_limit(
            amount_minor=difference, currency=account.currency, policy=policy
        ),
    )


# --- request ---------------------------------------------------------------------------------


def adjustment_request(
    *,
    account: Account,
    kind: str,
    reason_code: str,
    note: str,
    actor: Actor,
    amount_minor: int | None = None,
    currency: str | None = None,
    meter: Meter | None = None,
    period_start: dt.date | None = None,
    day: dt.date | None = None,
    corrected_quantity: Decimal | None = None,
    ticket: str = "",
    mismatch=None,
    alert=None,
    idempotency_key: str = "",
    submit: bool = True,
    now: dt.datetime | None = None,
) -> tuple[Adjustment, bool]:
    """Make an adjustment and (by default) submit it. Answers (adjustment, created): a
    repeated API idempotency key answers the first adjustment and False.

    Within the policy's limit, and when the requester may apply, the request is approved by
    the policy and applied at once; above it, it stays `requested` for a Manager."""
    now = now or timezone.now()
    if actor.api_key is not None and idempotency_key:
        existing = Adjustment.objects.filter(
            requested_by_key=actor.api_key, idempotency_key=idempotency_key
        ).first()
        if existing is not None:
            return existing, False
    if not actor.may("request"):
        raise NotPermitted("You may not request adjustments.")
    if reason_code not in ReasonCode.values:
        raise AdjustmentError(
            f"reason_code is one of {', '.join(ReasonCode.values)}.", "invalid_reason_code"
        )
    note = (note or "").strip()
    if not note:
        raise AdjustmentError("Say why in the note.", "note_required")
    if currency and currency != account.currency:
        raise AdjustmentError(
            f"The account bills in {account.currency}; an adjustment is in the account's "
            "currency (no exchange rates).",
            "currency_mismatch",
        )
    preview = adjustment_preview(
        account=account,
        kind=kind,
        amount_minor=amount_minor,
        meter=meter,
        period_start=period_start,
        day=day,
        corrected_quantity=corrected_quantity,
        now=now,
    )
    if mismatch is not None and mismatch.account_id != account.pk:
        raise AdjustmentError("The mismatch belongs to another account.")
    if alert is not None and alert.account_id != account.pk:
        raise AdjustmentError("The alert belongs to another account.")
    adjustment = Adjustment(
        kind=kind,
        account=account,
        currency=account.currency,
        amount_minor=preview.amount_minor,
        period=preview.period,
        meter=meter if kind == Adjustment.Kind.USAGE_CORRECTION else None,
        day=day if kind == Adjustment.Kind.USAGE_CORRECTION else None,
        original_quantity=preview.original_quantity,
        corrected_quantity=preview.corrected_quantity,
        total_before_minor=preview.total_before_minor,
        total_after_minor=preview.total_after_minor,
        price_difference_minor=preview.price_difference_minor,
        reason_code=reason_code,
        note=note,
        ticket=(ticket or "").strip(),
        mismatch=mismatch,
        alert=alert,
        requested_by=actor.user if actor.api_key is None else None,
        requested_by_key=actor.api_key,
        idempotency_key=idempotency_key if actor.api_key is not None else "",
    )
    try:
        with transaction.atomic():
            _save(adjustment, actor=actor, reason=f"Drafted ({reason_code})")
    except IntegrityError:
        if actor.api_key is not None and idempotency_key:
            # A concurrent request with the same key won: answer its adjustment.
            existing = Adjustment.objects.filter(
                requested_by_key=actor.api_key, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                return existing, False
        raise
    if submit:
        adjustment = adjustment_submit(adjustment=adjustment, actor=actor, now=now)
    return adjustment, True


def adjustment_submit(
    *, adjustment: Adjustment, actor: Actor, now: dt.datetime | None = None
) -> Adjustment:
    """draft -> requested; within the limit (and when the requester may apply) on to
    approved (by the policy) and applied."""
    now = now or timezone.now()
    policy = policy_for(currency=adjustment.currency, tier=adjustment.account.tier)
    with transaction.atomic():
        adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
        if adjustment.status != S.DRAFT:
            raise AdjustmentError(f"Only a draft is submitted (this one is {adjustment.status}).")
        _check_requester(adjustment, actor)
        adjustment.status = S.REQUESTED
        adjustment.submitted_at = now
        adjustment.expires_at = expires_at(submitted_at=now, policy=policy)
        _save(adjustment, actor=actor, reason=f"Requested: {adjustment.note}")
        auto = actor.may("apply") and within_limit(
            amount_minor=_policy_amount(adjustment), currency=adjustment.currency, policy=policy
        )
        if auto:
            adjustment.status = S.APPROVED
            adjustment.within_policy = True
            adjustment.decided_at = now
            _save(
                adjustment,
                actor=actor,
                reason=f"Approved by policy (within {policy.support_limit} {adjustment.currency})",
            )
    if adjustment.status == S.APPROVED:
        adjustment = adjustment_apply(adjustment=adjustment, actor=actor)
    return adjustment


def _policy_amount(adjustment: Adjustment) -> int:
    if adjustment.kind == Adjustment.Kind.USAGE_CORRECTION:
        return abs(adjustment.price_difference_minor or 0)
    return adjustment.amount_minor


def _is_requester(adjustment: Adjustment, actor: Actor) -> bool:
    if actor.api_key is not None:
        return adjustment.requested_by_key_id == actor.api_key.pk
    return actor.user is not None and adjustment.requested_by_id == actor.user.pk


def _check_requester(adjustment: Adjustment, actor: Actor) -> None:
    if not _is_requester(adjustment, actor):
        raise NotPermitted("Only the requester submits or withdraws a request.")


def _expire_if_due(adjustment: Adjustment, now: dt.datetime) -> bool:
    if adjustment.status == S.REQUESTED and adjustment.expires_at and now >= adjustment.expires_at:
        adjustment.status = S.EXPIRED
        adjustment.decided_at = now
        _save(adjustment, actor=Actor(), reason="Expired: not decided in time")
        return True
    return False


# --- decisions -------------------------------------------------------------------------------


def adjustment_approve(
    *, adjustment: Adjustment, actor: Actor, now: dt.datetime | None = None, apply: bool = True
) -> Adjustment:
    """requested -> approved (then applied), by a Manager who is not the requester."""
    now = now or timezone.now()
    if actor.api_key is not None or not actor.may("approve"):
        raise NotPermitted("Only a Manager approves adjustments.")
    with transaction.atomic():
        adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
        if _is_requester(adjustment, actor):
            raise NotPermitted("Four eyes: you cannot approve your own request.")
        if _expire_if_due(adjustment, now):
            pass
        elif adjustment.status != S.REQUESTED:
            raise AdjustmentError(f"Only a request is approved (this one is {adjustment.status}).")
        else:
            adjustment.status = S.APPROVED
            adjustment.approved_by = actor.user
            adjustment.decided_by = actor.user
            adjustment.decided_at = now
            _save(adjustment, actor=actor, reason="Approved")
    if adjustment.status == S.EXPIRED:
        raise AdjustmentError("The request expired before it was decided.", "expired")
    if apply:
        adjustment = adjustment_apply(adjustment=adjustment, actor=actor)
    return adjustment


def adjustment_reject(
    *, adjustment: Adjustment, actor: Actor, reason: str, now: dt.datetime | None = None
) -> Adjustment:
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise AdjustmentError("Say why the request is rejected.", "reason_required")
    if actor.api_key is not None or not actor.may("approve"):
        raise NotPermitted("Only a Manager rejects adjustments.")
    with transaction.atomic():
        adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
        if _is_requester(adjustment, actor):
            raise NotPermitted("Withdraw your own request instead of rejecting it.")
        if adjustment.status not in (S.REQUESTED, S.FAILED):
            raise AdjustmentError(f"Only a request is rejected (this one is {adjustment.status}).")
        adjustment.status = S.REJECTED
        adjustment.rejection_reason = reason
        adjustment.decided_by = actor.user
        adjustment.decided_at = now
        _save(adjustment, actor=actor, reason=f"Rejected: {reason}")
    return adjustment


def adjustment_withdraw(
    *, adjustment: Adjustment, actor: Actor, now: dt.datetime | None = None
) -> Adjustment:
    now = now or timezone.now()
    with transaction.atomic():
        adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
        _check_requester(adjustment, actor)
        if adjustment.status not in (S.DRAFT, S.REQUESTED):
            raise AdjustmentError(
                f"Only a draft or a request is withdrawn (this one is {adjustment.status})."
            )
        adjustment.status = S.WITHDRAWN
        adjustment.decided_at = now
        _save(adjustment, actor=actor, reason="Withdrawn by the requester")
    return adjustment


def adjustments_expire(*, now: dt.datetime | None = None) -> int:
    """Expire the requests not decided in their policy's number of days; how many."""
    now = now or timezone.now()
    count = 0
    for pk in Adjustment.objects.filter(status=S.REQUESTED, expires_at__lte=now).values_list(
        "pk", flat=True
    ):
        with transaction.atomic():
            adjustment = Adjustment.objects.select_for_update().get(pk=pk)
            count += _expire_if_due(adjustment, now)
    return count


# --- applying: corrections, then the provider, exactly once ----------------------------------

# Called after the provider answered and before its answer is stored: a test sets it to kill
# the process there (the crash the idempotency key must survive).
provider_answered_hook = None


def adjustment_idempotency_key(adjustment: Adjustment) -> str:
    from billing.services.installation import installation_id

    return f"mo-{installation_id()}-adjustment-{adjustment.pk}-credit"


def _write_corrections(adjustment: Adjustment, actor: Actor) -> list[int]:
    """Correction events that bring the meter's usage over the day (or period) from the
    original to the corrected quantity: the newest events are voided (count) or lowered
    (sum) first; a rise corrects the newest event upwards."""
    account, meter = adjustment.account, adjustment.meter
    start, end = _correction_range(account=account, period=adjustment.period, day=adjustment.day)
    current = _usage_between(account=account, meter=meter, start=start, end=end)
    if current != adjustment.original_quantity:
        raise AdjustmentError(
            f"The usage changed since the request ({adjustment.original_quantity} then, "
            f"{current} now): withdraw it and request anew.",
            "usage_changed",
        )
    reason = f"adjustment {adjustment.pk} ({adjustment.reason_code}): {adjustment.note}"[:500]
    delta = adjustment.corrected_quantity - current
    ids: list[int] = []
    events = _effective_events(account=account, meter=meter, start=start, end=end)
    if delta > 0:
        newest = events.first()
        if newest is None:
            raise AdjustmentError("No event to correct upwards in that range.")
        ids.append(
            usage_event_correct(
                event=newest, value=newest.value + delta, reason=reason, actor=actor.user
            ).pk
        )
        return ids
    remaining = -delta
    for event in events.iterator():
        if remaining <= 0:
            break
        unit = Decimal(1) if meter.aggregation == Meter.Aggregation.COUNT else event.value
        if unit <= remaining:
            new_value = None
            remaining -= unit
        else:
            new_value = event.value - remaining
            remaining = Decimal(0)
        ids.append(
            usage_event_correct(event=event, value=new_value, reason=reason, actor=actor.user).pk
        )
    if remaining > 0:  # pragma: no cover - the preview checked the usage
        raise AdjustmentError("Not enough usage to correct.")
    return ids


def _invoice_id(adjustment: Adjustment, provider) -> str:
    period = adjustment.period
    if period is None or period.state != BillingPeriod.State.CLOSED:
        return ""
    invoice = (
        ProviderInvoice.objects.filter(
            provider=provider.name, account=adjustment.account, period_start=period.starts_at
        )
        .order_by("-created_at_provider")
        .first()
    )
    if invoice is not None:
        return invoice.provider_invoice_id
    if provider.name == "simulated":
        return f"sim_in_{period.pk}"
    raise ProviderError(
        f"No {provider.name} invoice is known for the period {period}: pull the provider's "
        "invoices (pull_provider), then retry."
    )


def adjustment_apply(*, adjustment: Adjustment, actor: Actor, provider=None) -> Adjustment:
    """approved | failed -> applied (or failed, with the provider's error, retryable)."""
    from billing.services.push.common import provider_customer_ensure

    if not actor.may("apply") and not actor.may("approve"):
        raise NotPermitted("You may not apply adjustments.")
    with transaction.atomic():
        adjustment = (
            Adjustment.objects.select_for_update(of=("self",))
            .select_related("account", "period", "meter")
            .get(pk=adjustment.pk)
        )
        if adjustment.status not in (S.APPROVED, S.FAILED):
            raise AdjustmentError(
                f"Only an approved (or failed) adjustment is applied (this one is "
                f"{adjustment.status})."
            )
        if not adjustment.within_policy and adjustment.approved_by_id is None:
            raise NotPermitted("This adjustment needs a Manager's approval first.")
        adjustment.attempts += 1
        is_correction = adjustment.kind == Adjustment.Kind.USAGE_CORRECTION
        if is_correction and not adjustment.correction_event_ids:
            try:
                adjustment.correction_event_ids = _write_corrections(adjustment, actor)
            except AdjustmentError as exc:
                adjustment.status = S.FAILED
                adjustment.provider_error = exc.message
                _save(adjustment, actor=actor, reason=f"Failed: {exc.message}")
                return adjustment
        open_period = adjustment.period.state != BillingPeriod.State.CLOSED
        if is_correction and (open_period or adjustment.amount_minor == 0):
            # The correction events reach the provider through the usage push (corrections
            # are pushed like any usage) while the period is open; nothing to credit.
            adjustment.status = S.APPLIED
            adjustment.provider_route = Adjustment.Route.USAGE_PUSH
            adjustment.applied_at = timezone.now()
            adjustment.provider_error = ""
            _save(adjustment, actor=actor, reason="Applied: correction events written")
            return adjustment
        _save(adjustment, actor=actor, reason=f"Applying (attempt {adjustment.attempts})")

    provider = provider or get_provider()
    try:
        customer_id = provider_customer_ensure(
            provider=provider, account=adjustment.account, actor=actor.user
        )
        result = provider.create_credit(
            CreditRequest(
                reference=f"adj-{adjustment.pk}",
                idempotency_key=adjustment_idempotency_key(adjustment),
                customer_id=customer_id,
                currency=adjustment.currency,
                amount_minor=adjustment.amount_minor,
                reason_code=adjustment.reason_code,
                description=f"{adjustment.get_reason_code_display()}: {adjustment.note}",
                invoice_id=_invoice_id(adjustment, provider),
                metadata={"meterops_kind": adjustment.kind},
            )
        )
    except ProviderError as exc:
        with transaction.atomic():
            adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
            adjustment.status = S.FAILED
            adjustment.provider = provider.name
            adjustment.provider_error = str(exc)[:2000] or type(exc).__name__
            _save(adjustment, actor=actor, reason=f"Provider failed: {adjustment.provider_error}")
        return adjustment
    if provider_answered_hook is not None:
        provider_answered_hook(adjustment, result)
    with transaction.atomic():
        adjustment = Adjustment.objects.select_for_update().get(pk=adjustment.pk)
        adjustment.status = S.APPLIED
        adjustment.provider = provider.name
        adjustment.provider_route = result.route.value
        adjustment.provider_credit_id = result.credit_id
        adjustment.provider_error = ""
        adjustment.applied_at = timezone.now()
        _save(adjustment, actor=actor, reason=f"Applied at {provider.name}: {result.credit_id}")
    return adjustment


# --- what the projection shows ----------------------------------------------------------------


def adjustments_credits_for_period(period: BillingPeriod):
    """The projection's credit lines (registered in AdjustmentsConfig.ready): credits applied
    or approved on the period."""
    from billing.money import format_money
    from billing.projection import PeriodCredit

    policy = policy_for(currency=period.currency, tier=period.account.tier)
    credits = Adjustment.objects.filter(
        Q(status__in=[S.APPLIED, S.APPROVED, S.FAILED]),
        period=period,
        kind=Adjustment.Kind.CREDIT,
    ).order_by("pk")
    return [
        PeriodCredit(
            title=f"Credit #{credit.pk} ({credit.get_reason_code_display()})",
            amount_minor=credit.amount_minor,
            explanation=(
                f"A credit of {format_money(credit.amount_minor, credit.currency)} "
                f"({credit.reason_code}, {credit.status}): {credit.note}"
            ),
            allow_carried_balance=policy.allow_carried_balance,
        )
        for credit in credits
    ]


def hold_release_credit_open(
    *, hold, mode: str, actor, reason: str, credit_amount_minor: int | None = None, **_kwargs
) -> Adjustment | None:
    """A Manager released a billing hold with "push and open a credit" (the receiver of
    alerts.signals.billing_hold_released): open the credit they asked for, requested by them
    and linked to the hold's alert, under the same four-eyes policy as any credit (within
    the limit it is applied at once; above it, it waits for another Manager). Once per hold:
    the ticket names the hold."""
    if mode != "push_and_credit" or not credit_amount_minor:
        return None
    ticket = f"billing-hold-{hold.pk}"
    existing = Adjustment.objects.filter(account_id=hold.account_id, ticket=ticket).first()
    if existing is not None:
        return existing
    try:
        adjustment, _created = adjustment_request(
            account=hold.account,
            kind=Adjustment.Kind.CREDIT,
            reason_code="goodwill",
            note=f"Billing hold #{hold.pk} released (push and open a credit): {reason}",
            ticket=ticket,
            amount_minor=credit_amount_minor,
            currency=hold.account.currency,
            alert=hold.alert,
            actor=Actor(user=actor),
        )
    except AdjustmentError:
        logger.exception("The credit of released billing hold %s could not be opened", hold.pk)
        return None
    return adjustment
