"""The account hub's data: everything the account page shows above the fold, from every app.

One call (`account_hub`) per page: the projected invoice and why it changed (billing), open
alerts and an active billing hold (alerts), open mismatches (reconciliation), adjustments (slot)
and the actions the user's role allows. A fixed number of queries whatever the account holds
(the lists are bounded and select their relations).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from adjustments.models import Adjustment
from alerts.models import Alert, BillingHold
from billing.bill_change import bill_change_build
from billing.explain import (
    bill_change_driver,
    bill_change_sentence,
    percent_text,
    sentence_html,
    short_date,
)
from billing.money import format_money
from billing.platform_preview import difference_text, platform_preview_comparison
from billing.pricing import format_quantity
from billing.projection import ProjectedInvoice, ProjectionUnavailable, projected_invoice_build
from billing.selectors import subscription_current
from metering import periods
from metering.models import Account
from reconciliation.models import Mismatch
from reconciliation.selectors import mismatch_counts_by_platform, platform_label

# Bounded lists: the badges count everything, the page lists the first few.
LIST_LIMIT = 10
OPEN_ALERT_STATUSES = (Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED, Alert.Status.SNOOZED)
OPEN_MISMATCH_STATUSES = (Mismatch.Status.OPEN, Mismatch.Status.ACKNOWLEDGED)
# The adjustments' request page (a credit or a usage correction, with its preview).
CREDIT_REQUEST_URL_NAME = "admin:adjustments_adjustment_request"


@dataclass
class HubAction:
    label: str
    url: str | None  # None: not available yet (the page says why in `note`)
    note: str = ""


@dataclass
class AccountHub:
    account: Account
    today: dt.date
    invoice: ProjectedInvoice | None = None
    unavailable: str = ""
    plan_name: str = ""
    plan_code: str = ""
    sentence: str = ""
    sentence_html: SafeString | str = ""
    projected_text: str = ""
    to_date_text: str = ""
    previous_text: str = ""
    previous_source: str = ""
    change_text: str = ""
    change_direction: str = ""  # "up", "down" or ""
    period_text: str = ""
    alerts: list[Alert] = field(default_factory=list)
    alert_count: int = 0
    critical_count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    mismatch_count: int = 0
    # (platform label, open mismatches) side by side when a secondary platform is reconciled.
    mismatch_platforms: list[tuple[str, int]] = field(default_factory=list)
    hold: BillingHold | None = None
    # The account's most recent adjustments (open ones first), newest first.
    adjustments: list[Adjustment] = field(default_factory=list)
    actions: list[HubAction] = field(default_factory=list)
    # "meter:dimension" of the sentence's driver: the charts tab opens on that breakdown.
    breakdown: str = ""


def _change_text(invoice: ProjectedInvoice) -> tuple[str, str]:
    if invoice.change_minor is None:
        return "", ""
    if not invoice.change_minor:
        return "no change", ""
    sign = "+" if invoice.change_minor > 0 else "-"
    text = f"{sign}{format_money(abs(invoice.change_minor), invoice.currency)}"
    if invoice.previous is not None and invoice.previous.total_minor:
        text += f" ({percent_text(invoice.projected_total_minor, invoice.previous.total_minor)})"
    return text, "up" if invoice.change_minor > 0 else "down"


def _actions(hub: AccountHub, user) -> list[HubAction]:
    account = hub.account
    actions: list[HubAction] = []
    if user.has_perm("alerts.acknowledge_alert"):
        for alert in hub.alerts:
            if alert.status == Alert.Status.OPEN:
                actions.append(
                    HubAction(
                        f"Acknowledge alert #{alert.pk} ({alert.get_kind_display().lower()})",
                        reverse("admin:alerts_alert_change", args=[alert.pk]),
                    )
                )
    if hub.mismatches and user.has_perm("reconciliation.acknowledge_mismatch"):
        first = hub.mismatches[0]
        actions.append(
            HubAction(
                f"Work mismatch #{first.pk}",
                reverse("admin:reconciliation_mismatch_change", args=[first.pk]),
            )
        )
    if hub.hold is not None and user.has_perm("alerts.release_billinghold"):
        actions.append(
            HubAction(
                "Release the billing hold",
                reverse("admin:alerts_billinghold_change", args=[hub.hold.pk]),
            )
        )
    try:
        credit_url = reverse(CREDIT_REQUEST_URL_NAME, args=[account.pk])
    except NoReverseMatch:
        credit_url = None
    if credit_url and user.has_perm("adjustments.request_adjustment"):
        actions.append(HubAction("Request a credit", credit_url))
    elif credit_url is None:
        actions.append(
            HubAction("Request a credit", None, note="available once adjustments are installed")
        )
    if user.has_perm("metering.change_account"):
        actions.append(HubAction("Edit account settings", "#account-settings"))
    return actions


def account_hub(*, account: Account, user, now: dt.datetime | None = None) -> AccountHub:
    now = now or timezone.now()
    hub = AccountHub(account=account, today=periods.local_date(now, account.timezone))
    try:
        # Without each line's top dimension value: the sentence names its own drivers.
        invoice = projected_invoice_build(account=account, now=now, with_top=False)
    except ProjectionUnavailable as exc:
        hub.unavailable = exc.message
        subscription = subscription_current(account=account, at=now)
        if subscription is not None:
            hub.plan_name, hub.plan_code = subscription.plan.name, subscription.plan.code
    else:
        hub.invoice = invoice
        hub.plan_name, hub.plan_code = invoice.plan_name, invoice.plan_code
        cur = invoice.currency
        change = bill_change_build(account=account, invoice=invoice)
        hub.sentence = bill_change_sentence(change)
        driver = bill_change_driver(change)
        hub.breakdown = f"{driver[0]}:{driver[1]}" if driver else ""
        hub.sentence_html = mark_safe(sentence_html(hub.sentence))  # noqa: S308 - escaped there
        hub.projected_text = format_money(invoice.projected_total_minor, cur)
        hub.to_date_text = format_money(invoice.to_date_total_minor, cur)
        if invoice.previous is not None:
            hub.previous_text = format_money(invoice.previous.total_minor, cur)
            hub.previous_source = (
                "invoiced" if invoice.previous.source == "invoiced" else "not invoiced yet"
            )
        hub.change_text, hub.change_direction = _change_text(invoice)
        hub.period_text = (
            f"{short_date(invoice.period_start)} – {short_date(invoice.last_day)} "
            f"{invoice.last_day.year}"
        )

    alerts = (
        Alert.objects.filter(account=account, status__in=OPEN_ALERT_STATUSES)
        .select_related("meter")
        .order_by("-level", "-opened_at")
    )
    hub.alerts = list(alerts[:LIST_LIMIT])
    hub.alert_count = len(hub.alerts) if len(hub.alerts) < LIST_LIMIT else alerts.count()
    hub.critical_count = sum(1 for a in hub.alerts if a.level == Alert.Level.CRITICAL)
    mismatches = (
        Mismatch.objects.filter(account=account, status__in=OPEN_MISMATCH_STATUSES)
        .select_related("meter")
        .order_by("-id")
    )
    hub.mismatches = list(mismatches[:LIST_LIMIT])
    hub.mismatch_count = (
        len(hub.mismatches) if len(hub.mismatches) < LIST_LIMIT else mismatches.count()
    )
    by_platform = mismatch_counts_by_platform(mismatches)
    if len(by_platform) > 1:
        hub.mismatch_platforms = [(platform_label(name), n) for name, n in by_platform]
    hub.hold = (
        BillingHold.objects.filter(account=account, status=BillingHold.Status.ACTIVE)
        .select_related("alert")
        .first()
    )
    hub.adjustments = sorted(
        Adjustment.objects.filter(account=account).order_by("-created_at")[:LIST_LIMIT],
        key=lambda adjustment: not adjustment.is_open,
    )
    hub.actions = _actions(hub, user)
    return hub


# --- the "platform preview" tab ------------------------------------------------------------------


def _money_or_dash(minor: int | None, currency: str) -> str:
    return "–" if minor is None else format_money(minor, currency)


def _signed(minor: int, currency: str) -> str:
    if not minor:
        return "none"
    return f"{'+' if minor > 0 else '-'}{format_money(abs(minor), currency)}"


def platform_preview_section(*, account: Account, fresh: bool = False) -> dict:
    """The tab's context: billing's comparison of our projection so far with the platform's
    preview, as text for the page (every amount with its currency, quantities with units)."""
    comparison = platform_preview_comparison(account, use_cache=not fresh)
    if comparison is None:
        return {"account": account, "comparison": None}
    cur = comparison.currency
    rows = [
        {
            "line": line,
            "ours": _money_or_dash(line.ours_minor, cur),
            "theirs": _money_or_dash(line.theirs_minor, cur),
            "difference": _signed(line.difference_minor, cur),
            "differs": bool(line.difference_minor),
            "ours_quantity": "–"
            if line.ours_quantity is None
            else f"{format_quantity(line.ours_quantity)} {line.unit}".strip(),
            "theirs_quantity": "–"
            if line.theirs_quantity is None
            else f"{format_quantity(line.theirs_quantity)} {line.unit}".strip(),
        }
        for line in comparison.lines
    ]
    return {
        "account": account,
        "comparison": comparison,
        "rows": rows,
        "ours_text": _money_or_dash(comparison.ours_minor, cur),
        "projected_text": _money_or_dash(comparison.ours_projected_minor, cur),
        "theirs_text": (
            "–"
            if comparison.theirs_minor is None
            else format_money(comparison.theirs_minor, comparison.theirs_currency or cur)
        ),
        "difference_text": difference_text(comparison),
        "read_at": comparison.read_at.astimezone(dt.UTC) if comparison.read_at else None,
    }
