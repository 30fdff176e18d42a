"""Alerts' writes: evaluation runs (findings to alerts), the alert lifecycle people drive
(acknowledge, assign, snooze, resolve, label) and billing holds.

One open alert per (rule, account, meter, period), enforced by a partial unique constraint. A
re-evaluation refreshes an open alert's numbers without a history row (every 15 minutes would
bury the history); opening, escalating, waking from a snooze and resolving are saved with a
history reason. Each account is evaluated under a transaction-scoped advisory lock, so two
overlapping runs (a second beat, a redelivered task) never open the same alert twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.utils import timezone

from alerts.evaluation import (
    Finding,
    RuleBook,
    finding_context,
    findings_for_accounts,
)
from alerts.models import Alert, AlertRule, BillingHold
from alerts.notify import alert_notify, billing_hold_notify, billing_hold_window_notify
from alerts.selectors import held_usage_oldest_by_account, hold_warn_after, provider_window
from alerts.signals import billing_hold_released
from metering.models import Account, Meter

logger = logging.getLogger(__name__)

SLICE_SIZE = 500
_LOCK_NAMESPACE = 0x41_4C_52  # "ALR": advisory locks per account while evaluating it

_NUMBERS = (
    "day",
    "observed",
    "baseline",
    "band_low",
    "band_high",
    "multiple",
    "period_usage",
    "previous_period_usage",
    "limit",
    "projected_invoice_minor",
    "previous_invoice_minor",
    "currency",
    "drivers",
    "message",
)


@dataclass
class EvaluationRun:
    accounts: int = 0
    findings: int = 0
    opened: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    updated: int = 0
    resolved: list[int] = field(default_factory=list)
    holds: list[int] = field(default_factory=list)

    def merge(self, other: EvaluationRun) -> None:
        self.accounts += other.accounts
        self.findings += other.findings
        self.opened += other.opened
        self.escalated += other.escalated
        self.updated += other.updated
        self.resolved += other.resolved
        self.holds += other.holds


def _save(alert: Alert, *, reason: str, user=None) -> None:
    alert._change_reason = reason
    if user is not None:
        alert._history_user = user
    alert.save()


def _lock_account(account_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, account_id])


def account_ids_to_evaluate() -> list[int]:
    return list(
        Account.objects.filter(status=Account.Status.ACTIVE)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def alerts_evaluate_accounts(
    *,
    account_ids: list[int],
    at: dt.datetime | None = None,
    book: RuleBook | None = None,
    meters: list[Meter] | None = None,
) -> EvaluationRun:
    """Evaluate every applicable rule for these accounts as of `at` (default now) and bring
    their alerts up to date: open, refresh, escalate, auto-resolve. Safe to run twice."""
    at = at or timezone.now()
    book = book or RuleBook.load()
    accounts = list(Account.objects.filter(pk__in=account_ids).order_by("pk"))
    result = findings_for_accounts(accounts=accounts, at=at, book=book, meters=meters)
    by_account: dict[int, list[Finding]] = {}
    for finding in result.findings:
        by_account.setdefault(finding.account.pk, []).append(finding)
    run = EvaluationRun(accounts=len(accounts), findings=len(result.findings))
    with_alerts = set(
        Alert.objects.filter(account_id__in=account_ids)
        .exclude(status=Alert.Status.RESOLVED)
        .values_list("account_id", flat=True)
    )
    for account in accounts:
        findings = by_account.get(account.pk, [])
        if not findings and account.pk not in with_alerts:
            continue
        run.merge(_apply_account(account, findings, at=at, baselines=result.baselines))
    return run


@transaction.atomic
def _apply_account(account: Account, findings: list[Finding], *, at, baselines) -> EvaluationRun:
    _lock_account(account.pk)
    run = EvaluationRun()
    open_alerts = {
        (a.rule_id, a.account_id, a.meter_id, a.period_key): a
        for a in Alert.objects.filter(account=account)
        .exclude(status=Alert.Status.RESOLVED)
        .select_related("rule", "account", "meter")
    }
    for finding in findings:
        alert = open_alerts.pop(finding.key, None)
        if alert is not None and alert.day == finding.day:
            # The previous period does not move within a day: keep what was measured.
            finding.previous_period_usage = alert.previous_period_usage
        finding_context(
            finding,
            at=at,
            data_baseline=baselines.get((account.pk, finding.meter.pk if finding.meter else 0)),
        )
        if alert is None:
            alert = _open(finding, at=at)
            run.opened.append(alert.pk)
            if finding.rule.hold and alert.level == Alert.Level.CRITICAL:
                hold = billing_hold_open(account=account, alert=alert, at=at)
                if hold is not None:
                    run.holds.append(hold.pk)
            continue
        changed = _refresh(alert, finding, at=at)
        if changed == "escalated":
            run.escalated.append(alert.pk)
            if finding.rule.hold and alert.level == Alert.Level.CRITICAL:
                hold = billing_hold_open(account=account, alert=alert, at=at)
                if hold is not None:
                    run.holds.append(hold.pk)
        else:
            run.updated += 1
    for alert in open_alerts.values():
        if _clear(alert, at=at):
            run.resolved.append(alert.pk)
    return run


def _open(finding: Finding, *, at: dt.datetime) -> Alert:
    alert = Alert(
        rule=finding.rule,
        kind=finding.rule.kind,
        account=finding.account,
        meter=finding.meter,
        period_key=finding.period_key,
        level=finding.level,
        opened_at=at,
        evaluated_at=at,
        **{name: getattr(finding, name) for name in _NUMBERS},
    )
    alert.currency = alert.currency or ""
    _save(alert, reason=f"Opened by rule {finding.rule.code}")
    alert_notify(alert, what="opened")
    return alert


def _refresh(alert: Alert, finding: Finding, *, at: dt.datetime) -> str:
    for name in _NUMBERS:
        setattr(alert, name, getattr(finding, name))
    alert.currency = alert.currency or ""
    alert.evaluated_at = at
    history_reason = None
    if alert.cleared_since is not None:
        alert.cleared_since = None
    if alert.status == Alert.Status.SNOOZED and alert.snoozed_until and alert.snoozed_until <= at:
        alert.status, alert.snoozed_until = Alert.Status.OPEN, None
        history_reason = "Snooze ended; the condition still holds"
    escalated = finding.level > alert.level
    if escalated:
        alert.level = finding.level
        alert.escalated_at = at
        history_reason = f"Escalated to {alert.get_level_display().lower()}"
    if history_reason:
        _save(alert, reason=history_reason)
    else:
        alert.save_without_historical_record()
    if escalated and alert.status != Alert.Status.SNOOZED:
        alert_notify(alert, what="escalated")
    return "escalated" if escalated else "updated"


def _resolve_after(alert: Alert) -> dt.timedelta:
    hours = alert.rule.effective_params.get("resolve_after_hours", 0) or 0
    return dt.timedelta(hours=float(hours))


def _clear(alert: Alert, *, at: dt.datetime) -> bool:
    """The condition no longer holds: note since when, and resolve once it has stayed cleared
    for the rule's `resolve_after_hours`. True when resolved."""
    if alert.cleared_since is None:
        alert.cleared_since = at
    if at - alert.cleared_since >= _resolve_after(alert):
        alert.status = Alert.Status.RESOLVED
        alert.resolved_at = at
        alert.resolution_reason = "The condition cleared"
        _save(alert, reason="Resolved automatically: the condition cleared")
        return True
    alert.save_without_historical_record()
    return False


def alerts_evaluate_all(*, at: dt.datetime | None = None, slice_size: int = SLICE_SIZE):
    """Evaluate every active account in-process, slice by slice (the Celery task fans out
    one task per slice instead)."""
    at = at or timezone.now()
    book = RuleBook.load()
    meters = list(Meter.objects.filter(active=True).order_by("code"))
    run = EvaluationRun()
    ids = account_ids_to_evaluate()
    for start in range(0, len(ids), slice_size):
        run.merge(
            alerts_evaluate_accounts(
                account_ids=ids[start : start + slice_size], at=at, book=book, meters=meters
            )
        )
    return run


# --- people ------------------------------------------------------------------------------------


def _locked(alert: Alert) -> Alert:
    return Alert.objects.select_for_update().select_related("rule", "account").get(pk=alert.pk)


@transaction.atomic
def alert_acknowledge(*, alert: Alert, actor, assignee=None, reason: str = "") -> Alert:
    """Acknowledge the alert and assign it (to `assignee`, default the actor)."""
    alert = _locked(alert)
    if alert.status == Alert.Status.RESOLVED:
        raise ValueError("A resolved alert cannot be acknowledged.")
    alert.status = Alert.Status.ACKNOWLEDGED
    alert.assignee = assignee or actor
    alert.snoozed_until = None
    _save(alert, reason=reason or f"Acknowledged, assigned to {alert.assignee}", user=actor)
    return alert


@transaction.atomic
def alert_snooze(*, alert: Alert, actor, until: dt.datetime, reason: str = "") -> Alert:
    alert = _locked(alert)
    if alert.status == Alert.Status.RESOLVED:
        raise ValueError("A resolved alert cannot be snoozed.")
    if until <= timezone.now():
        raise ValueError("Snooze until a time in the future.")
    alert.status = Alert.Status.SNOOZED
    alert.snoozed_until = until
    _save(alert, reason=reason or f"Snoozed until {until:%Y-%m-%d %H:%M} UTC", user=actor)
    return alert


@transaction.atomic
def alert_resolve(*, alert: Alert, actor, reason: str, label: str = "") -> Alert:
    if not reason.strip():
        raise ValueError("Resolving an alert needs a reason.")
    alert = _locked(alert)
    if alert.status == Alert.Status.RESOLVED:
        return alert
    alert.status = Alert.Status.RESOLVED
    alert.resolved_at = timezone.now()
    alert.resolution_reason = reason[:255]
    if label:
        alert.label = Alert.Label(label)
    _save(alert, reason=reason[:100], user=actor)
    return alert


@transaction.atomic
def alert_label(*, alert: Alert, actor, label: str, reason: str = "") -> Alert:
    alert = _locked(alert)
    alert.label = Alert.Label(label)
    _save(alert, reason=reason or f"Labelled {alert.get_label_display()}", user=actor)
    return alert


# --- rules -------------------------------------------------------------------------------------


@transaction.atomic
def alert_rule_set_enabled(*, rule: AlertRule, enabled: bool, actor, reason: str) -> AlertRule:
    rule.enabled = enabled
    rule._change_reason = reason
    rule._history_user = actor
    rule.save()
    return rule


# --- billing holds -----------------------------------------------------------------------------


def billing_hold_open(
    *, account: Account, alert: Alert | None, at: dt.datetime, reason: str = ""
) -> BillingHold | None:
    """Hold the account's billing push (None when a hold is already active)."""
    if BillingHold.objects.filter(account=account, status=BillingHold.Status.ACTIVE).exists():
        return None
    hold = BillingHold(
        account=account,
        alert=alert,
        reason=(reason or (f"Alert #{alert.pk}: {alert.message}" if alert else "Held"))[:255],
        opened_at=at,
    )
    hold._change_reason = "Held by an alert rule" if alert else "Held"
    hold.save()
    billing_hold_notify(hold, what="held")
    return hold


RELEASE_PERMISSION = "alerts.release_billinghold"


@transaction.atomic
def billing_hold_release(
    *,
    hold: BillingHold,
    actor,
    reason: str,
    mode: str = BillingHold.ReleaseMode.PUSH,
    credit_amount_minor: int | None = None,
) -> BillingHold:
    """Release the hold: the next push sends everything that was held, once.

    Only a user with alerts.release_billinghold (the Manager role) may release, with a reason,
    whatever the caller (admin, shell, task). Mode "push_and_credit" also asks, through the
    `alerts.signals.billing_hold_released` signal (sent for every release, after commit), for a
    credit request that the adjustments app opens, for `credit_amount_minor` (integer minor
    units of the account's currency, required in that mode). Releasing a released hold changes
    nothing.
    """
    if actor is None or not actor.has_perm(RELEASE_PERMISSION):
        raise PermissionDenied(
            "Releasing a billing hold needs the alerts.release_billinghold permission."
        )
    if not reason.strip():
        raise ValueError("Releasing a hold needs a reason.")
    mode = BillingHold.ReleaseMode(mode)
    if mode == BillingHold.ReleaseMode.PUSH_AND_CREDIT:
        if not isinstance(credit_amount_minor, int) or credit_amount_minor <= 0:
            raise ValueError("Push and open a credit needs the credit's amount (above zero).")
    else:
        credit_amount_minor = None
    hold = BillingHold.objects.select_for_update().select_related("account").get(pk=hold.pk)
    if hold.status == BillingHold.Status.RELEASED:
        return hold
    hold.status = BillingHold.Status.RELEASED
    hold.released_at = timezone.now()
    hold.released_by = actor
    hold.release_mode = mode
    hold.release_reason = reason[:255]
    hold._change_reason = f"Released ({mode.label.lower()}): {reason}"[:100]
    hold._history_user = actor
    hold.save()
    billing_hold_notify(hold, what="released")
    transaction.on_commit(
        lambda: billing_hold_released.send(
            sender=BillingHold,
            hold=hold,
            mode=str(mode),
            actor=actor,
            reason=reason,
            credit_amount_minor=credit_amount_minor,
        )
    )
    return hold


def billing_holds_window_warn(*, at: dt.datetime | None = None) -> list[int]:
    """Tell the CS team, once per hold, when the oldest usage an active hold keeps back is
    older than BILLING_HOLD_WARN_DAYS (alerts.selectors.hold_warn_after): the provider refuses
    usage older than its window (Stripe 35 days), so the hold must be released before then or
    that usage is never billed. Returns the holds warned."""
    at = at or timezone.now()
    warn_after = hold_warn_after(provider_window())
    if warn_after is None:  # the platform takes usage of any age
        return []
    holds = list(
        BillingHold.objects.filter(status=BillingHold.Status.ACTIVE).select_related(
            "account", "alert__rule"
        )
    )
    oldest = held_usage_oldest_by_account([h.account_id for h in holds])
    warned = []
    for hold in holds:
        first = oldest.get(hold.account_id)
        if first is None or at - first < warn_after:
            continue
        with transaction.atomic():
            if billing_hold_window_notify(hold, oldest=first, at=at):
                warned.append(hold.pk)
    return warned
