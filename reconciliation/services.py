"""Reconciliation writes: compare an account's cells and keep one mismatch per cell over the
threshold; the manager's actions on a mismatch.

A cell is one account × meter × billing period. Its three numbers:

- ours: the rollups in the meter's aggregation over the period's exact bounds (its local days,
  from the daily rollups cut in the account's zone); per UTC day, from the hourly rollups;
- reported: what the push ledger says the provider took (sent or acknowledged), with apart
  what is pending, failed or too old;
- provider: what the provider recorded over the period's exact bounds (one summary call over
  those bounds when they are not UTC midnights; else the sum, or for a `last` meter the last,
  of its UTC-day summaries), its UTC-day summaries (pulled for the whole period, plus a day
  either side, at reconciliation time), and for a closed period the invoice line's quantity.

max, latest and unique_count meters are compared as period values (what the provider's
`last` meter holds), never as sums of days.

Each platform is reconciled on its own, with its own runs and mismatches (`provider`): the
primary (BILLING_PROVIDER) and, during a migration, the read-only secondary
(BILLING_PROVIDER_SECONDARY). Meterops never pushes to the secondary, so it has no push ledger:
its comparison is ours against what it recorded, its `reported` number stands in as ours (what
it should hold, per UTC day too) with nothing pending, and its causes are the platform's side
(customer mapping, meter configuration, day shift, missing or extra). Its pulls are planned
from the primary's ledger (new usage there is new usage the team's feed brings it too), and it
never holds a period's close.

Reruns are idempotent: the same cell updates the same mismatch (a unique constraint, and the
account's work runs under an advisory lock), a cell back within its threshold is resolved
automatically, and a run that finds nothing new writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone
from simple_history.utils import bulk_create_with_history

from billing.models import BillingPeriod, PushLedgerEntry
from billing.money import to_minor_units
from billing.pricing import PriceSpec, price_usage
from billing.providers import get_provider, get_secondary_provider, platform_rules
from billing.providers.base import BillingProvider, ProviderError
from billing.services.pull import provider_customer_lookup, provider_summaries_pull
from billing.services.push import ledger_retry_failed, meter_spec
from metering.account_holds import held_account_ids
from metering.models import Account, Meter
from reconciliation import selectors as sel
from reconciliation.causes import CellInput, DayNumbers, analyse
from reconciliation.models import (
    Mismatch,
    MismatchDay,
    ProviderPullMark,
    ReconciliationRun,
    ReconciliationThreshold,
)

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock(RECON_LOCK_NS, account id): one reconciliation of an account at a time.
RECON_LOCK_NS = 0x7265_636E  # "recn"
ZERO = Decimal(0)

_COMPARED = (
    "ours",
    "reported",
    "pending",
    "too_old",
    "provider_value",
    "invoiced",
    "delta",
    "delta_reported",
    "delta_provider",
    "delta_invoiced",
    "delta_amount_minor",
    "currency",
    "causes",
    "top_cause",
    "over_threshold",
)


@dataclass
class AccountResult:
    accounts: int = 0
    periods: int = 0
    cells: int = 0
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    pulled: int = 0
    pull_errors: int = 0
    pull_skipped: int = 0

    def add(self, other: AccountResult) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class Threshold:
    absolute_units: Decimal = ZERO
    relative_percent: Decimal = ZERO
    money_minor: int = 0

    def exceeded(self, *, gap: Decimal, ours: Decimal, money_minor: int, priced: bool) -> bool:
        gap = abs(gap)
        if gap == 0 or gap <= self.absolute_units:
            return False
        if ours and gap * 100 / abs(ours) <= self.relative_percent:
            return False
        return not priced or money_minor >= self.money_minor


def thresholds_load() -> dict[int | None, Threshold]:
    """meter id (None: global) -> threshold."""
    return {
        row.meter_id: Threshold(row.absolute_units, row.relative_percent, row.money_minor)
        for row in ReconciliationThreshold.objects.all()
    }


def _threshold_for(thresholds: dict[int | None, Threshold], meter_id: int) -> Threshold:
    return thresholds.get(meter_id) or thresholds.get(None) or Threshold()


def _amount(spec: PriceSpec | None, quantity: Decimal) -> Decimal:
    if spec is None:
        return ZERO
    return price_usage(price=spec, quantity=max(quantity, ZERO)).amount


def _money_minor(
    spec: PriceSpec | None, ours: Decimal, others: list[Decimal], currency: str
) -> int:
    """What the largest gap between ours and the other numbers is worth at the period's price,
    rounded once to the currency's minor unit."""
    if spec is None:
        return 0
    base = _amount(spec, ours)
    worst = max((abs(base - _amount(spec, other)) for other in others), default=ZERO)
    return to_minor_units(worst, currency)


# --- provider reads at reconciliation time -----------------------------------------------------


def _answers_exact_bounds(provider: BillingProvider) -> bool:
    """Whether the adapter's summaries honour bounds that are not UTC midnights (the simulated
    one per UTC day inside them; the Stripe adapter asks Stripe for one summary over the exact,
    minute-aligned bounds, without a grouping window)."""
    return bool(getattr(provider, "exact_summary_bounds", False))


def _provider_period_value(
    *,
    provider: BillingProvider | None,
    provider_meter_id: str,
    customer_id: str,
    period: BillingPeriod,
    days: dict[date, Decimal],
    additive: bool,
) -> tuple[Decimal, bool]:
    """(the provider's value over the period's exact bounds, exact?). UTC-aligned periods are
    read from the day summaries; others with one summary call over the exact bounds (the
    adapter answers per UTC day inside them) when the adapter can, else from the UTC cover
    days (not exact: an edge day also holds the neighbouring period's usage)."""
    first, end = sel.cover_days(period.starts_at, period.ends_at)
    aligned = sel.is_utc_aligned(period.starts_at) and sel.is_utc_aligned(period.ends_at)
    if (
        not aligned
        and provider is not None
        and _answers_exact_bounds(provider)
        and customer_id
        and provider_meter_id
    ):
        try:
            summaries = sorted(
                provider.list_meter_event_summaries(
                    provider_meter_id=provider_meter_id,
                    customer_id=customer_id,
                    start=period.starts_at,
                    end=period.ends_at,
                ),
                key=lambda s: s.start,
            )
        except ProviderError as exc:
            logger.info("exact-bounds summary refused (%s); using UTC days", exc)
        else:
            if additive:
                return sum((s.value for s in summaries), ZERO), True
            return (summaries[-1].value if summaries else ZERO), True
    inside = {d: v for d, v in days.items() if first <= d < end}
    if additive:
        return sum(inside.values(), ZERO), aligned
    return (inside[max(inside)] if inside else ZERO), aligned


# Stripe's summaries can lag the meter events it accepted by up to an hour: usage completed in
# the ledger less than this before a pull may still be missing from that pull.
PROVIDER_PROCESSING_DELAY = timedelta(hours=1)


def _pull_plan(
    *,
    provider_name: str,
    periods: list[BillingPeriod],
    meter_ids: dict[int, set[int]],
    now,
    ledger_provider: str | None = None,
) -> dict[tuple[int, int], date | None]:
    """For each (period, meter) to pull, the first UTC day to pull from (None: skip the pull,
    nothing in it can have changed). A cell never pulled is pulled over its whole window. After
    a pull, only ledger entries (of `ledger_provider`: the primary's for a read-only secondary)
    completed later (less the provider's processing delay) can
    change what the provider holds: a cell with none (a closed and invoiced period pulled more
    than the delay after its last entry completed, or an open one that got nothing new) is not
    pulled again; otherwise the pull starts at the UTC day of the oldest such entry's usage."""
    marks = {
        (m.period_id, m.meter_id): m.pulled_at
        for m in ProviderPullMark.objects.filter(
            provider=provider_name, period__in=[p.pk for p in periods]
        )
    }
    plan: dict[tuple[int, int], date | None] = {}
    for period in periods:
        first, _end = sel.window_days(period.starts_at, period.ends_at)
        for meter_id in meter_ids[period.pk]:
            pulled_at = marks.get((period.pk, meter_id))
            if pulled_at is None:
                plan[(period.pk, meter_id)] = first
                continue
            since = pulled_at - PROVIDER_PROCESSING_DELAY
            oldest = (
                PushLedgerEntry.objects.filter(
                    provider=ledger_provider or provider_name,
                    account_id=period.account_id,
                    meter_id=meter_id,
                    completed_at__gt=since,
                    day__gte=first,
                    day__lt=_end,
                )
                .order_by("day")
                .values_list("day", flat=True)
                .first()
            )
            # None: nothing completed since (open or closed and invoiced): skip the pull.
            plan[(period.pk, meter_id)] = max(first, oldest) if oldest is not None else None
    return plan


def _pull_period(
    *,
    provider: BillingProvider,
    account: Account,
    period: BillingPeriod,
    meter_ids: set[int],
    ctx: _Context,
    customer_id: str,
    plan: dict[tuple[int, int], date | None],
    end: date,
    now: datetime,
    result: AccountResult,
) -> None:
    for meter_id in sorted(meter_ids):
        # A read-only platform's meter is matched there by the pull itself (never created).
        if (meter_id not in ctx.mappings and not ctx.read_only) or not customer_id:
            continue
        first = plan.get((period.pk, meter_id))
        if first is None:
            result.pull_skipped += 1
            continue
        meter = ctx.meters[meter_id]
        try:
            provider_summaries_pull(
                provider=provider, account=account, meter=meter, since=first, until=end, now=now
            )
            result.pulled += 1
        except (LookupError, ProviderError) as exc:
            result.pull_errors += 1
            logger.warning("reconciliation pull %s/%s: %s", account.external_id, meter.code, exc)
            continue
        ProviderPullMark.objects.update_or_create(
            provider=provider.name, period=period, meter_id=meter_id, defaults={"pulled_at": now}
        )


# --- the comparison ----------------------------------------------------------------------------


@dataclass
class _Context:
    """What every account of a run shares: read once per run."""

    meters: dict[int, Meter]
    mappings: dict
    thresholds: dict[int | None, Threshold]
    unique: bool  # any unique_count meter (else the distinct tables are not read)
    held: set[int] = field(default_factory=set)  # accounts whose push a billing hold keeps back
    prices: dict[int, dict[int, PriceSpec]] = field(default_factory=dict)
    # Whether the platform reads usage back per day ([9]): Lago only per billing period
    # (PlatformRules.read_window "period"), so its cells are compared over the whole period
    # and get no per-day drill-down (the causes are the period's, never a day shift).
    per_day: bool = True
    provider_name: str = ""
    # The read-only secondary platform: no push ledger (see the module's docstring).
    read_only: bool = False

    @classmethod
    def load(cls, provider_name: str, thresholds=None) -> _Context:
        read_only = sel.is_read_only_platform(provider_name)
        return cls(
            meters=Meter.objects.in_bulk(),
            mappings=sel.provider_meters(provider=provider_name),
            thresholds=thresholds if thresholds is not None else thresholds_load(),
            unique=sel.has_unique_meters(),
            # A billing hold keeps usage back from our push, not from the team's own feed.
            held=set() if read_only else held_account_ids(),
            per_day=platform_rules(provider_name).read_window != "period",
            provider_name=provider_name,
            read_only=read_only,
        )

    @property
    def ledger_provider(self) -> str:
        """Whose push ledger plans this platform's pulls."""
        return _default_provider_name() if self.read_only else self.provider_name

    def prices_for(self, periods: list[BillingPeriod]) -> None:
        missing = {p.subscription.plan_id for p in periods} - set(self.prices)
        if missing:
            loaded = sel.plan_prices(missing)
            for plan_id in missing:
                self.prices[plan_id] = loaded.get(plan_id, {})


@dataclass
class _Reads:
    """The batched reads of a set of periods, by period id."""

    ours_days: dict
    ours_period: dict
    ledger: dict
    provider_days: dict
    invoiced: dict
    late: dict

    provider_period: dict = field(default_factory=dict)
    day_cells: set = field(default_factory=set)  # (period id, meter id) read per UTC day

    @classmethod
    def load(
        cls, periods: list[BillingPeriod], *, provider_name: str, unique: bool, ledger: bool = True
    ) -> _Reads:
        """Everything but our per-UTC-day numbers, which only cells that differ need (and no
        ledger for a platform without one)."""
        closed = [p for p in periods if p.state == BillingPeriod.State.CLOSED]
        return cls(
            ours_days={},
            ours_period=sel.ours_by_period(periods, unique=unique),
            ledger=sel.ledger_for_periods(periods, provider=provider_name) if ledger else {},
            provider_days=sel.provider_days(periods, provider=provider_name),
            invoiced={
                p.pk: sel.invoiced_quantities(
                    account_id=p.account_id, provider=provider_name, period=p
                )
                for p in closed
            },
            late={p.pk: sel.late_usage_after_close(period=p) for p in closed},
        )


@dataclass
class Cell:
    meter: Meter
    numbers: dict
    days: list[DayNumbers]
    over: bool


def _period_meter_ids(period: BillingPeriod, reads: _Reads, ctx: _Context) -> set[int]:
    return (
        set(ctx.prices.get(period.subscription.plan_id, {}))
        | set(reads.ours_period.get(period.pk, {}))
        | set(reads.ledger.get(period.pk, {}))
        | set(reads.provider_days.get(period.pk, {}))
    )


def _provider_values(
    *,
    period: BillingPeriod,
    reads: _Reads,
    ctx: _Context,
    provider: BillingProvider | None,
    customer_id: str,
) -> list[int]:
    """Fill reads.provider_period for the period's cells; return the meters whose cell
    differs (ours against the provider or the invoice): only those need per-day numbers."""
    values = reads.provider_period.setdefault(period.pk, {})
    ours_period = reads.ours_period.get(period.pk, {})
    invoiced = reads.invoiced.get(period.pk, {})
    differing = []
    for meter_id in sorted(_period_meter_ids(period, reads, ctx)):
        mapping = ctx.mappings.get(meter_id)
        value, _exact = _provider_period_value(
            provider=provider,
            provider_meter_id=mapping.provider_meter_id if mapping else "",
            customer_id=customer_id,
            period=period,
            days=reads.provider_days.get(period.pk, {}).get(meter_id, {}),
            additive=ctx.meters[meter_id].aggregation in sel.SUM_METERS,
        )
        values[meter_id] = value
        ours = ours_period.get(meter_id, ZERO)
        if ours != value or invoiced.get(meter_id, ours) != ours:
            differing.append(meter_id)
    return differing


def _cells_for_period(
    *,
    period: BillingPeriod,
    reads: _Reads,
    ctx: _Context,
    customer_id: str,
) -> list[Cell]:
    """Compare every cell of one period from the batched reads (no query). A cell that
    matches gets no per-day numbers (it opens nothing and has nothing to explain)."""
    first, end = sel.window_days(period.starts_at, period.ends_at)
    prices = ctx.prices.get(period.subscription.plan_id, {})
    ours_days = reads.ours_days.get(period.pk, {})
    ours_period = reads.ours_period.get(period.pk, {})
    ledger = reads.ledger.get(period.pk, {})
    prov_days = reads.provider_days.get(period.pk, {})
    invoiced = reads.invoiced.get(period.pk, {})
    late = reads.late.get(period.pk, {})
    meter_ids = _period_meter_ids(period, reads, ctx)
    aligned = sel.is_utc_aligned(period.starts_at) and sel.is_utc_aligned(period.ends_at)
    all_days = list(_iter_days(first, end))
    cells = []
    for meter_id in sorted(meter_ids):
        meter = ctx.meters[meter_id]
        additive = meter.aggregation in sel.SUM_METERS
        mapping = ctx.mappings.get(meter_id)
        days_provider = prov_days.get(meter_id, {})
        provider_value = reads.provider_period[period.pk][meter_id]
        ours = ours_period.get(meter_id, ZERO)
        meter_days = ours_days.get(meter_id, {})
        if ctx.read_only:
            cell_ledger = _ours_as_reported(ours, meter_days)
        else:
            cell_ledger = ledger.get(meter_id) or sel.LedgerCell()
        empty = ZERO if additive else None
        days = []
        with_days = ctx.per_day and (period.pk, meter_id) in reads.day_cells
        for day in all_days if with_days else ():
            ours_day = meter_days.get(day)
            days.append(
                DayNumbers(
                    day=day,
                    ours=ours_day.value if ours_day else empty,
                    reported=cell_ledger.done_by_day.get(day, empty),
                    pending=cell_ledger.pending_by_day.get(day, ZERO),
                    provider=days_provider.get(day, empty),
                    events=ours_day.events if ours_day else 0,
                )
            )
        late_events, late_value = late.get(meter_id, (0, ZERO))
        invoiced_value = invoiced.get(meter_id)
        causes = analyse(
            CellInput(
                additive=additive,
                unit=meter.unit
                or ("events" if meter.aggregation == Meter.Aggregation.COUNT else ""),
                ours=ours,
                reported=cell_ledger.done,
                provider=provider_value,
                pending=cell_ledger.pending,
                failed=cell_ledger.failed,
                too_old=cell_ledger.too_old,
                invoiced=invoiced_value,
                late_value=late_value,
                late_events=late_events,
                days=days,
                boundaries_aligned=aligned,
                customer_id=customer_id,
                reported_by_customer=cell_ledger.done_by_customer,
                provider_meter_aggregation=mapping.aggregation if mapping else None,
                expected_aggregation=meter_spec(meter).aggregation,
                ledger_counts=cell_ledger.counts,
                held=period.account_id in ctx.held,
            )
        )
        spec = prices.get(meter_id)
        others = [provider_value] + ([invoiced_value] if invoiced_value is not None else [])
        money = _money_minor(spec, ours, others, period.currency) if causes else 0
        gap = max(abs(ours - other) for other in others)
        over = _threshold_for(ctx.thresholds, meter_id).exceeded(
            gap=gap, ours=ours, money_minor=money, priced=spec is not None
        )
        numbers = {
            "ours": ours,
            "reported": cell_ledger.done,
            "pending": cell_ledger.pending + cell_ledger.failed,
            "too_old": cell_ledger.too_old,
            "provider_value": provider_value,
            "invoiced": invoiced_value,
            "delta": ours - provider_value,
            "delta_reported": ours - cell_ledger.done,
            "delta_provider": cell_ledger.done - provider_value,
            "delta_invoiced": None if invoiced_value is None else ours - invoiced_value,
            "delta_amount_minor": money,
            "currency": period.currency,
            "causes": causes,
            "top_cause": causes[0]["code"] if causes else "",
            "over_threshold": over,
        }
        cells.append(Cell(meter=meter, numbers=numbers, days=days, over=over))
    return cells


def _ours_as_reported(ours: Decimal, days: dict) -> sel.LedgerCell:
    """A read-only platform's stand-in for the push ledger it does not have: it should hold
    what we count, so its "reported" is ours (per UTC day too) and nothing is pending, failed
    or too old; what it lacks or has in excess is on its side."""
    return sel.LedgerCell(
        done=ours,
        done_by_day={day: d.value for day, d in days.items() if d.value is not None},
    )


def _iter_days(first: date, end: date):
    day = first
    while day < end:
        yield day
        day = date.fromordinal(day.toordinal() + 1)


def _same(a, b) -> bool:
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a == b
    return a == b


def _save(mismatch: Mismatch, *, reason: str, actor=None, fields: list[str] | None = None) -> None:
    mismatch._change_reason = reason[:100]
    if actor is not None:
        mismatch._history_user = actor
    mismatch.save(update_fields=fields)


def _day_row(mismatch: Mismatch, d: DayNumbers) -> MismatchDay:
    return MismatchDay(
        mismatch=mismatch,
        day=d.day,
        ours=d.ours,
        reported=d.reported,
        pending=d.pending,
        provider=d.provider,
        events=d.events,
    )


def _write_days(mismatch: Mismatch, days: list[DayNumbers]) -> None:
    MismatchDay.objects.filter(mismatch=mismatch).delete()
    MismatchDay.objects.bulk_create(_day_row(mismatch, d) for d in days)


def _apply(
    *,
    cell: Cell,
    existing: Mismatch | None,
    account: Account,
    period: BillingPeriod,
    provider_name: str,
    run: ReconciliationRun | None,
    now: datetime,
    result: AccountResult,
    checked: list[int],
    created: list[tuple[Mismatch, list[DayNumbers]]],
) -> None:
    numbers = cell.numbers
    if existing is None:
        if not cell.over:
            return
        mismatch = Mismatch(
            account=account,
            meter=cell.meter,
            period=period,
            period_start=period.start_date,
            period_end=period.end_date,
            period_starts_at=period.starts_at,
            period_ends_at=period.ends_at,
            provider=provider_name,
            opened_at=now,
            last_checked_at=now,
            last_run=run,
            **numbers,
        )
        created.append((mismatch, cell.days))  # saved together, with their history
        result.opened += 1
        return
    changed = [f for f in _COMPARED if not _same(getattr(existing, f), numbers[f])]
    existing.last_checked_at = now
    existing.last_run = run
    run_text = f"reconciliation run {run.pk if run else '-'}"
    if not cell.over:
        for name in changed:
            setattr(existing, name, numbers[name])
        if existing.status != Mismatch.Status.RESOLVED:
            existing.status = Mismatch.Status.RESOLVED
            existing.resolution = Mismatch.Resolution.AUTO
            existing.resolved_at = now
            existing.resolution_note = f"Within the threshold again ({run_text})."
            _save(existing, reason=f"Resolved automatically: matching in {run_text}")
            _write_days(existing, cell.days)
            result.resolved += 1
        elif changed:
            Mismatch.objects.filter(pk=existing.pk).update(
                last_checked_at=now, last_run=run, **{f: numbers[f] for f in changed}
            )
        else:
            checked.append(existing.pk)
        return
    reopen = existing.status == Mismatch.Status.RESOLVED and (
        existing.resolution == Mismatch.Resolution.AUTO or "delta" in changed
    )
    if not changed and not reopen:
        checked.append(existing.pk)
        return
    for name in changed:
        setattr(existing, name, numbers[name])
    if reopen:
        existing.status = Mismatch.Status.OPEN
        existing.resolution = ""
        existing.resolved_at = None
        reason = f"Reopened: over the threshold again in {run_text}"
    else:
        reason = f"Numbers changed in {run_text}"
    _save(existing, reason=reason)
    _write_days(existing, cell.days)
    result.updated += 1


def reconcile_accounts(
    *,
    accounts: list[Account],
    provider: BillingProvider | None = None,
    now: datetime | None = None,
    pull: bool = True,
    period_end_before: date | None = None,
    run: ReconciliationRun | None = None,
    thresholds: dict[int | None, Threshold] | None = None,
    ctx: _Context | None = None,
    period_ids: list[int] | None = None,
    provider_name: str | None = None,
) -> AccountResult:
    """Compare every cell of the accounts' periods to reconcile (open, closing, or closed in
    the last 7 days; with `period_end_before`, only periods ending by that local date) and
    open, update or resolve their mismatches.

    With `pull`, first pull the provider's UTC-day summaries of each period's window and read
    each unaligned period's exact-bounds value from the provider; without, use the summaries
    already stored (and the UTC cover days for unaligned periods). The reads are batched over
    all the accounts' periods (a fixed number of queries), then the writes happen in one
    transaction under each account's advisory lock; a cell whose mismatch did not change is
    not written (only its last_checked_at, in one statement).

    The platform is `provider`'s, else `provider_name` (default: the primary); its mismatches
    are its own (a read-only secondary's are compared without a push ledger)."""
    now = now or timezone.now()
    if provider is not None:
        provider_name = provider.name
    provider_name = provider_name or _default_provider_name()
    if provider is None and pull:
        provider = platform_provider(provider_name)
    ctx = ctx or _Context.load(provider_name, thresholds)
    if ctx.read_only and provider is not None:
        provider.read_only = True  # never written, whoever built it
    result = AccountResult()
    by_id = {a.pk: a for a in accounts}
    periods = sel.periods_to_reconcile(
        account_ids=list(by_id),
        now=now,
        period_end_before=period_end_before,
        period_ids=period_ids,
    )
    if not periods:
        return result
    for period in periods:
        period.account = by_id[period.account_id]
    ctx.prices_for(periods)
    customers = {
        a.pk: (provider_customer_lookup(provider, a) if provider is not None else "")
        for a in accounts
    }
    if pull and provider is not None:
        # Provider calls outside the write transaction; cells that cannot have changed since
        # their last pull are skipped (see _pull_plan).
        to_pull = {
            period.pk: {
                m
                for m in set(ctx.prices.get(period.subscription.plan_id, {})) | set(ctx.mappings)
                if m in ctx.mappings or ctx.read_only
            }
            for period in periods
        }
        plan = _pull_plan(
            provider_name=provider.name,
            periods=periods,
            meter_ids=to_pull,
            now=now,
            ledger_provider=ctx.ledger_provider,
        )
        for period in periods:
            _first, end = sel.window_days(period.starts_at, period.ends_at)
            _pull_period(
                provider=provider,
                account=period.account,
                period=period,
                meter_ids=to_pull[period.pk],
                ctx=ctx,
                customer_id=customers[period.account_id],
                plan=plan,
                end=end,
                now=now,
                result=result,
            )
        if ctx.read_only:
            # The pull matched the platform's meters (never created): read them again.
            ctx.mappings = sel.provider_meters(provider=provider_name)
    reads = _Reads.load(
        periods, provider_name=provider_name, unique=ctx.unique, ledger=not ctx.read_only
    )
    unresolved = set(
        Mismatch.objects.unresolved()
        .filter(period__in=periods, provider=provider_name)
        .values_list("period_id", "meter_id")
    )
    need_days = []
    for period in periods:
        differing = _provider_values(
            period=period,
            reads=reads,
            ctx=ctx,
            provider=provider if pull else None,
            customer_id=customers[period.account_id],
        )
        # Cells that differ, and open mismatches (resolving one rewrites its days).
        wanted = set(differing) | {m for p, m in unresolved if p == period.pk}
        need_days.extend((period, meter_id) for meter_id in sorted(wanted))
    reads.ours_days = sel.ours_by_utc_day(need_days, unique=ctx.unique)
    reads.day_cells = {(period.pk, meter_id) for period, meter_id in need_days}
    computed = [
        (
            period,
            _cells_for_period(
                period=period,
                reads=reads,
                ctx=ctx,
                customer_id=customers[period.account_id],
            ),
        )
        for period in periods
    ]
    checked: list[int] = []
    created: list[tuple[Mismatch, list[DayNumbers]]] = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                # Ids past 2^31 fold onto lock keys; a collision only makes two accounts take turns.
                "SELECT pg_advisory_xact_lock(%s, (a %% 2147483647)::int) "
                "FROM unnest(%s::bigint[]) a ORDER BY a",
                [RECON_LOCK_NS, sorted(by_id)],
            )
        existing = {
            (m.period_id, m.meter_id): m
            for m in Mismatch.objects.filter(
                period__in=[p for p, _ in computed], provider=provider_name
            )
        }
        for period, cells in computed:
            result.periods += 1
            for cell in cells:
                result.cells += 1
                _apply(
                    cell=cell,
                    existing=existing.get((period.pk, cell.meter.pk)),
                    account=period.account,
                    period=period,
                    provider_name=provider_name,
                    run=run,
                    now=now,
                    result=result,
                    checked=checked,
                    created=created,
                )
        if created:
            saved = bulk_create_with_history(
                [m for m, _ in created],
                Mismatch,
                batch_size=1000,
                default_change_reason=f"Opened by reconciliation run {run.pk if run else '-'}",
            )
            MismatchDay.objects.bulk_create(
                [
                    _day_row(mismatch, d)
                    for mismatch, (_, days) in zip(saved, created, strict=True)
                    for d in days
                ],
                batch_size=5000,
            )
        if checked:
            Mismatch.objects.filter(pk__in=checked).update(last_checked_at=now, last_run=run)
    return result


def reconcile_account(*, account: Account, **kwargs) -> AccountResult:
    """reconcile_accounts for one account (see there)."""
    return reconcile_accounts(accounts=[account], **kwargs)


def _default_provider_name() -> str:
    from django.conf import settings

    return settings.BILLING_PROVIDER


def platform_provider(name: str) -> BillingProvider:
    """The adapter of platform `name`: the read-only one for the secondary."""
    if sel.is_read_only_platform(name):
        secondary = get_secondary_provider()
        if secondary is not None:
            return secondary
    return get_provider(name)


def reconciliation_run(
    *,
    accounts: list[Account] | None = None,
    account: Account | None = None,
    provider: BillingProvider | None = None,
    now: datetime | None = None,
    pull: bool = True,
    period_end_before: date | None = None,
    trigger: str = "task",
    thresholds: dict[int | None, Threshold] | None = None,
    ctx: _Context | None = None,
    period_ids: list[int] | None = None,
    provider_name: str | None = None,
) -> ReconciliationRun:
    """Reconcile one account (or a batch of them) against one platform (`provider`'s, else
    `provider_name`, default the primary) and record the run: the platform, started, finished,
    periods, cells compared, mismatches opened, updated and resolved, duration; the run names
    the account when there is one. A run that fails is recorded as failed, with its error, and
    the error is raised again."""
    accounts = list(accounts or []) + ([account] if account is not None else [])
    provider_name = provider.name if provider is not None else provider_name
    provider_name = provider_name or _default_provider_name()
    started = time.monotonic()
    run = ReconciliationRun.objects.create(
        account=accounts[0] if len(accounts) == 1 else None,
        provider=provider_name,
        trigger=trigger,
        started_at=timezone.now(),
    )
    try:
        result = reconcile_accounts(
            accounts=accounts,
            provider=provider,
            now=now,
            pull=pull,
            period_end_before=period_end_before,
            run=run,
            thresholds=thresholds,
            ctx=ctx,
            period_ids=period_ids,
            provider_name=provider_name,
        )
    except Exception as exc:
        run.status = ReconciliationRun.Status.FAILED
        run.error = f"{exc.__class__.__name__}: {exc}"[:2000]
        _finish(run, started)
        raise
    run.status = ReconciliationRun.Status.DONE
    run.periods = result.periods
    run.cells_compared = result.cells
    run.mismatches_opened = result.opened
    run.mismatches_updated = result.updated
    run.mismatches_resolved = result.resolved
    run.result = result  # not stored: the pull's counts, for the caller
    _finish(run, started)
    return run


def _finish(run: ReconciliationRun, started: float) -> None:
    run.finished_at = timezone.now()
    run.duration_ms = int((time.monotonic() - started) * 1000)
    run.save()


BATCH_ACCOUNTS = 200


def reconciliation_run_all(
    *,
    account_ids: list[int] | None = None,
    period_end_before: date | None = None,
    now: datetime | None = None,
    pull: bool = True,
    trigger: str = "command",
    batch: int = BATCH_ACCOUNTS,
    progress: Callable[[int, int, ReconciliationRun], None] | None = None,
    platforms: list[str] | None = None,
) -> tuple[AccountResult, list[ReconciliationRun]]:
    """Reconcile the given accounts (default: every account with a period to reconcile) in
    batches of `batch` accounts, one recorded run per batch (`batch=1`: one per account) and
    platform (default: the primary, then the read-only secondary when one is set), as
    `manage.py reconcile` does. `progress(accounts done, accounts in all, run)` after each.
    A secondary platform that fails is recorded as a failed run and skipped, never the
    primary's reconciliation."""
    now = now or timezone.now()
    ids = account_ids or sel.accounts_to_reconcile(now=now, period_end_before=period_end_before)
    total = AccountResult()
    runs = []
    accounts = list(Account.objects.filter(pk__in=ids).order_by("pk"))
    total.accounts = len(accounts)
    for provider_name in platforms or sel.reconciliation_platforms():
        runs.extend(
            _run_platform(
                provider_name=provider_name,
                accounts=accounts,
                total=total,
                now=now,
                pull=pull,
                period_end_before=period_end_before,
                trigger=trigger,
                batch=batch,
                progress=progress,
            )
        )
    return total, runs


def _run_platform(
    *,
    provider_name: str,
    accounts: list[Account],
    total: AccountResult,
    now: datetime,
    pull: bool,
    period_end_before: date | None,
    trigger: str,
    batch: int,
    progress: Callable[[int, int, ReconciliationRun], None] | None,
) -> list[ReconciliationRun]:
    provider = platform_provider(provider_name) if pull else None
    ctx = _Context.load(provider_name)
    runs = []
    done = 0
    for start in range(0, len(accounts), max(batch, 1)):
        chunk = accounts[start : start + max(batch, 1)]
        try:
            run = reconciliation_run(
                accounts=chunk,
                provider=provider,
                provider_name=provider_name,
                now=now,
                pull=pull,
                period_end_before=period_end_before,
                trigger=trigger,
                ctx=ctx,
            )
        except ProviderError as exc:
            if not ctx.read_only:
                raise
            logger.warning("reconciliation against the secondary %s failed: %s", provider_name, exc)
            done += len(chunk)
            continue
        total.add(
            AccountResult(
                periods=run.periods,
                cells=run.cells_compared,
                opened=run.mismatches_opened,
                updated=run.mismatches_updated,
                resolved=run.mismatches_resolved,
                pulled=run.result.pulled,
                pull_errors=run.result.pull_errors,
                pull_skipped=run.result.pull_skipped,
            )
        )
        runs.append(run)
        done += len(chunk)
        if progress is not None:
            progress(done, len(accounts), run)
    return runs


def reconciliation_run_platforms(
    *, account: Account, period_end_before: date | None = None, trigger: str = "task"
) -> list[ReconciliationRun]:
    """Reconcile one account against each platform (the primary, then the read-only secondary
    when one is set), one recorded run each, pulling first. The secondary failing is recorded
    (a failed run) and logged; the primary failing raises."""
    runs = []
    for provider_name in sel.reconciliation_platforms():
        try:
            runs.append(
                reconciliation_run(
                    account=account,
                    provider_name=provider_name,
                    period_end_before=period_end_before,
                    trigger=trigger,
                )
            )
        except ProviderError as exc:
            if not sel.is_read_only_platform(provider_name):
                raise
            logger.warning("reconciliation against the secondary %s failed: %s", provider_name, exc)
    return runs


# --- before a period closes ---------------------------------------------------------------------


def reconciliation_period_close_check(
    *, period: BillingPeriod, provider: BillingProvider | None = None, now: datetime | None = None
) -> list[str]:
    """Reconcile exactly this period (pulling the provider's numbers first) and return why it
    should be held: one sentence per unresolved mismatch over its threshold, largest money
    first; empty when it may close. Meant for the period roll, which billing cannot import:
    it would reach this through a setting (see the README's Reconciliation section). Recorded
    as a run with trigger `period_close`. Only the primary platform (or `provider`) is
    checked: a read-only secondary never holds a close."""
    provider_name = provider.name if provider is not None else _default_provider_name()
    reconciliation_run(
        account=period.account,
        provider=provider,
        provider_name=provider_name,
        now=now,
        trigger="period_close",
        # Only this period, whatever its state (the roll calls this while it is closing).
        period_ids=[period.pk],
    )
    blocking = (
        Mismatch.objects.unresolved()
        .filter(period=period, over_threshold=True, provider=provider_name)
        .select_related("meter")
        .order_by("-delta_amount_minor", "pk")
    )
    return [
        f"{m.meter.code}: ours {m.ours.normalize():f}, provider {m.provider_value.normalize():f}"
        f" ({m.top_cause or 'unexplained'}, {m.delta_amount_minor} {m.currency} minor units"
        " at stake)"
        for m in blocking
    ]


# --- the manager's actions ---------------------------------------------------------------------


class MismatchActionError(ValueError):
    pass


def _require_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise MismatchActionError("A reason is required.")
    return reason


def mismatch_acknowledge(*, mismatch: Mismatch, actor, reason: str, assignee=None) -> Mismatch:
    """open -> acknowledged, assigned to `assignee` (default: the actor)."""
    reason = _require_reason(reason)
    if mismatch.status == Mismatch.Status.RESOLVED:
        raise MismatchActionError("This mismatch is already resolved.")
    with transaction.atomic():
        mismatch.status = Mismatch.Status.ACKNOWLEDGED
        mismatch.assignee = assignee or actor
        mismatch.acknowledged_at = mismatch.acknowledged_at or timezone.now()
        _save(mismatch, reason=f"Acknowledged: {reason}", actor=actor)
    return mismatch


def mismatch_assign(*, mismatch: Mismatch, assignee, actor, reason: str) -> Mismatch:
    reason = _require_reason(reason)
    with transaction.atomic():
        mismatch.assignee = assignee
        if mismatch.status == Mismatch.Status.OPEN:
            mismatch.status = Mismatch.Status.ACKNOWLEDGED
            mismatch.acknowledged_at = timezone.now()
        who = assignee.get_username() if assignee else "nobody"
        _save(mismatch, reason=f"Assigned to {who}: {reason}", actor=actor)
    return mismatch


MANUAL_RESOLUTIONS = (
    Mismatch.Resolution.REPUSHED,
    Mismatch.Resolution.CREDITED,
    Mismatch.Resolution.ACCEPTED,
    Mismatch.Resolution.PROVIDER_FIXED,
)


def mismatch_resolve(*, mismatch: Mismatch, resolution: str, actor, reason: str) -> Mismatch:
    reason = _require_reason(reason)
    if resolution not in MANUAL_RESOLUTIONS:
        raise MismatchActionError(f"Unknown resolution {resolution!r}.")
    with transaction.atomic():
        mismatch.status = Mismatch.Status.RESOLVED
        mismatch.resolution = resolution
        mismatch.resolution_note = reason
        mismatch.resolved_at = timezone.now()
        _save(mismatch, reason=f"Resolved ({resolution}): {reason}", actor=actor)
    return mismatch


def mismatch_failed_entry_ids(mismatch: Mismatch) -> list[int]:
    """The cell's failed push ledger entries (what a re-push sends again)."""
    entries = sel.ledger_entries_for_cell(mismatch=mismatch, limit=100_000)
    return [e.pk for e in entries if e.status == PushLedgerEntry.Status.FAILED]


def mismatch_repush(*, mismatch: Mismatch, actor, reason: str) -> int:
    """Put the cell's failed ledger entries back to pending through the push ledger's own
    service (the next push sends them with their original identifiers, so repeating this is
    harmless). Pending entries need nothing: the next push sends them. Returns how many."""
    reason = _require_reason(reason)
    with transaction.atomic():
        count = ledger_retry_failed(entry_ids=mismatch_failed_entry_ids(mismatch), actor=actor)
        _save(mismatch, reason=f"Re-pushed {count} failed entr(ies): {reason}", actor=actor)
    return count


def mismatch_day_range(mismatch: Mismatch) -> tuple[datetime, datetime]:
    first, end = sel.window_days(mismatch.period_starts_at, mismatch.period_ends_at)
    return sel.utc_midnight(first), sel.utc_midnight(end).astimezone(UTC)
