"""The demo's stories that need more than one app (after `demo`, `demo_billing` and `rollup`):

- near quota: an account limit (metadata `limits`) just above what the account has used of API
  calls this period, so the default quota rule warns (80%) and the page shows the cumulative
  line close to the limit;
- billing hold: a hold on the account, as a Manager would open it;
- a credit waiting for approval: a slot, wired once adjustments exist.

The spike and silent stories are in the events themselves (metering.services.demo). Which
account tells which story is in its metadata `demo_story`. Safe to run again.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from adjustments.models import Adjustment
from adjustments.services import Actor, adjustment_request
from alerts.models import BillingHold
from alerts.services import billing_hold_open
from billing.selectors import period_open
from metering.currencies import currency_minor_unit
from metering.models import Account, Meter
from metering.rollup_selectors import usage_totals_between
from metering.services.accounts import account_upsert
from metering.services.demo import STORY_CREDIT, STORY_HOLD, STORY_NEAR_QUOTA

# The near-quota account has used this share of its limit when the stories are seeded.
NEAR_QUOTA_SHARE = Decimal("0.85")
NEAR_QUOTA_METER = "api_calls"
HOLD_REASON = "Demo: the customer disputes last month's invoice; pushes wait for finance."


@dataclass
class DemoStories:
    near_quota: str | None = None
    held: str | None = None
    credit: str | None = None
    notes: list[str] = field(default_factory=list)


def _story_account(story: str) -> Account | None:
    return Account.objects.filter(metadata__demo=True, metadata__demo_story=story).first()


def demo_near_quota_seed(*, account: Account, now: dt.datetime, actor=None) -> Decimal | None:
    """Set the account's API-call limit so that this period's usage is NEAR_QUOTA_SHARE of it."""
    meter = Meter.objects.filter(code=NEAR_QUOTA_METER).first()
    period = period_open(account=account, at=now)
    if meter is None or period is None:
        return None
    used = usage_totals_between(account=account, meters=[meter], start=period.starts_at, end=now)
    used = used.get(meter.pk) or Decimal(0)
    if not used:
        return None
    limit = Decimal(math.ceil(used / NEAR_QUOTA_SHARE))
    limits = dict((account.metadata or {}).get("limits") or {})
    if limits.get(NEAR_QUOTA_METER) == str(limit):
        return limit
    limits[NEAR_QUOTA_METER] = str(limit)
    account_upsert(
        external_id=account.external_id,
        name=account.name,
        timezone=account.timezone,
        currency=account.currency,
        tier=account.tier,
        metadata={**account.metadata, "limits": limits},
        actor=actor,
        reason="Demo: an account limit close to this period's usage",
    )
    return limit


def demo_hold_seed(*, account: Account, now: dt.datetime) -> BillingHold | None:
    """SLOT (billing holds): opens a plain active hold through alerts' service; the engineer
    building the hold behaviour may replace it with the full story (held pushes, release)."""
    return billing_hold_open(account=account, alert=None, at=now, reason=HOLD_REASON)


def demo_credit_waiting_seed(*, account: Account, now: dt.datetime, actor=None):
    """A goodwill credit above the approval limit (250.00 in the account's currency against
    the default 100.00), requested by the demo's `support` user and waiting for a Manager.
    None when the `support` user is missing; an existing open credit is kept (reruns)."""
    support = get_user_model().objects.filter(username="support").first()
    if support is None:
        return None
    existing = Adjustment.objects.filter(
        account=account, kind=Adjustment.Kind.CREDIT, status=Adjustment.Status.REQUESTED
    ).first()
    if existing is not None:
        return existing
    adjustment, _created = adjustment_request(
        account=account,
        kind=Adjustment.Kind.CREDIT,
        reason_code="outage_sla",
        note="Search API down for 6 hours on the 3rd; the SLA credit agreed with the customer.",
        ticket="ZD-2048",
        amount_minor=250 * 10 ** currency_minor_unit(account.currency),
        currency=account.currency,
        actor=Actor(user=support),
        now=now,
    )
    return adjustment


def demo_stories_seed(*, now: dt.datetime | None = None, actor=None) -> DemoStories:
    now = now or timezone.now()
    result = DemoStories()
    with transaction.atomic():
        account = _story_account(STORY_NEAR_QUOTA)
        if account is not None and demo_near_quota_seed(account=account, now=now, actor=actor):
            result.near_quota = account.external_id
        account = _story_account(STORY_HOLD)
        if account is not None:
            demo_hold_seed(account=account, now=now)
            result.held = account.external_id
        account = _story_account(STORY_CREDIT)
        if account is not None:
            if demo_credit_waiting_seed(account=account, now=now, actor=actor) is not None:
                result.credit = account.external_id
            else:
                result.notes.append("credit waiting for approval: not wired yet (adjustments)")
    return result
