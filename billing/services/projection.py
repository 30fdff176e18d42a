"""Daily snapshots of the projected invoice, so the admin can show how it moved.

One row per (account, period, local day). Taking a snapshot again the same day overwrites that
day's row in one `INSERT ... ON CONFLICT DO UPDATE`, so two runs (a second beat, a redelivered
task), even at the same moment, leave exactly one row holding the later computation.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import ProjectionSnapshot, Subscription
from billing.periods import local_date
from billing.pricing import decimal_text
from billing.projection import ProjectedInvoice, ProjectionUnavailable, projected_invoice_build
from metering.models import Account

logger = logging.getLogger(__name__)


def projection_lines_json(invoice: ProjectedInvoice) -> list[dict]:
    """The lines as JSON-safe dicts: decimals as strings, amounts as integer minor units."""

    def text(value):
        return None if value is None else decimal_text(value)

    return [
        {
            "kind": str(line.kind),
            "title": line.title,
            "meter": line.meter_code or None,
            "units_to_date": text(line.units_to_date),
            "forecast_units": text(line.forecast_units),
            "amount_to_date_minor": line.amount_to_date_minor,
            "projected_amount_minor": line.projected_amount_minor,
            "explanation": line.explanation,
        }
        for line in invoice.lines
    ]


@transaction.atomic
def projection_snapshot_take(
    *, account: Account, on_date: dt.date, actor=None, now: dt.datetime | None = None
) -> ProjectionSnapshot:
    """Record the projection of the account's open period as it stands for the local day
    `on_date` (today in the account's zone, or an earlier day of the open period). Idempotent
    per day: a second call updates the day's row.

    Raises billing.projection.ProjectionUnavailable (no subscription, no open period).
    `actor` is accepted for symmetry with other services; snapshots are derived data and keep
    no history.
    """
    now = now or timezone.now()
    invoice = projected_invoice_build(account=account, on=on_date, now=now)
    row = ProjectionSnapshot(
        account=account,
        period_id=invoice.period_id,
        taken_on=on_date,
        currency=invoice.currency,
        to_date_total_minor=invoice.to_date_total_minor,
        projected_total_minor=invoice.projected_total_minor,
        lines=projection_lines_json(invoice),
        computed_at=now,
    )
    (saved,) = ProjectionSnapshot.objects.bulk_create(
        [row],
        update_conflicts=True,
        unique_fields=["account", "period", "taken_on"],
        update_fields=[
            "currency",
            "to_date_total_minor",
            "projected_total_minor",
            "lines",
            "computed_at",
        ],
    )
    return saved


@dataclass
class SnapshotRun:
    taken: int = 0
    skipped: int = 0  # no open period today (not opened yet, or being invoiced)
    failed_account_ids: list[int] = field(default_factory=list)


def projection_snapshot_account_ids(*, now: dt.datetime | None = None) -> list[int]:
    """Accounts that may have an open period today: those with a subscription not ended
    before yesterday (UTC; each account's own zone is checked when its snapshot is taken)."""
    now = now or timezone.now()
    yesterday = now.date() - dt.timedelta(days=1)
    return list(
        Subscription.objects.filter(Q(ended_at__isnull=True) | Q(ended_at__gte=yesterday))
        .exclude(status=Subscription.Status.PENDING)
        .order_by("account_id")
        .values_list("account_id", flat=True)
        .distinct()
    )


def projection_snapshot_take_for_account(
    *, account_id: int, on_date: dt.date | None = None, now: dt.datetime | None = None
) -> ProjectionSnapshot | None:
    """Today's snapshot (in the account's zone, unless `on_date` is given) of one account;
    None when it has no open period that day."""
    now = now or timezone.now()
    account = Account.objects.get(pk=account_id)
    day = on_date or local_date(now, account.timezone)
    try:
        return projection_snapshot_take(account=account, on_date=day, now=now)
    except ProjectionUnavailable as exc:
        logger.info("No projection snapshot for %s on %s: %s", account.external_id, day, exc)
        return None


def projection_snapshots_take_all(*, now: dt.datetime | None = None) -> SnapshotRun:
    """Take today's snapshot (each account's own local day) of every subscribed account,
    in-process, one transaction per account; an account that fails is logged and the rest
    carry on. The Celery task fans out one task per account instead."""
    now = now or timezone.now()
    run = SnapshotRun()
    for account_id in projection_snapshot_account_ids(now=now):
        try:
            snapshot = projection_snapshot_take_for_account(account_id=account_id, now=now)
        except Exception:  # one broken account must not stop everyone's snapshots
            logger.exception("Projection snapshot failed for account %s", account_id)
            run.failed_account_ids.append(account_id)
            continue
        if snapshot is None:
            run.skipped += 1
        else:
            run.taken += 1
    return run
