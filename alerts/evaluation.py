"""Rule evaluation: from the rollups and the projection to findings (what should be alerted
now). Reads only; `alerts.services` turns findings into alerts, and the backtest prints them.

Work is done a slice of accounts at a time with a fixed number of queries per slice (daily
rollups for the look-back window, first days with usage, last hours with usage), plus a few per
account that has a quota (included units or a limit), an invoice rule, or a finding.

"Today" is the account's local day containing `at`, so far. A spike compares what today has
used so far with a whole normal day (never an extrapolation of a partial day), so it fires as
soon as the day has already used k times a normal day, and a quiet morning never looks like a
spike or a drop. Drops are judged on hours of silence and on complete days only, so a partial
day cannot fire one. Relative rules (spike, drop) apply to count and sum meters, and need
`min_history_days` of history counted from the meter's first day with usage.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from alerts.baseline import WEEK, ZERO, Baseline, median, ratio, weekday_baseline
from alerts.models import Alert, AlertRule
from billing.models import BillingPeriod, Price, ProjectionSnapshot
from billing.money import format_money
from billing.projection import ProjectionUnavailable, projected_invoice_build
from billing.selectors import period_previous
from metering import periods
from metering.decimals import decimal_text
from metering.models import Account, Meter
from metering.rollup_selectors import usage_totals_between

logger = logging.getLogger(__name__)

A = Meter.Aggregation
RELATIVE_AGGREGATIONS = (A.COUNT, A.SUM)
SCOPE_RANK = {AlertRule.Scope.GLOBAL: 1, AlertRule.Scope.TIER: 2, AlertRule.Scope.ACCOUNT: 3}
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
LIVE_MARGIN = dt.timedelta(minutes=5)


@dataclass
class Finding:
    rule: AlertRule
    account: Account
    meter: Meter | None
    period_key: str
    day: dt.date
    level: int
    message: str
    observed: Decimal | None = None
    baseline: Decimal | None = None
    band_low: Decimal | None = None
    band_high: Decimal | None = None
    multiple: Decimal | None = None
    period_usage: Decimal | None = None
    previous_period_usage: Decimal | None = None
    limit: Decimal | None = None
    projected_invoice_minor: int | None = None
    previous_invoice_minor: int | None = None
    currency: str = ""
    drivers: list = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def key(self) -> tuple:
        return (
            self.rule.pk,
            self.account.pk,
            self.meter.pk if self.meter else None,
            self.period_key,
        )


# --- rules -------------------------------------------------------------------------------------


class RuleBook:
    """Every rule (enabled or not), to pick the one that applies to an account and meter."""

    def __init__(self, rules: Iterable[AlertRule], *, only_code: str | None = None) -> None:
        self.by_kind: dict[str, list[AlertRule]] = defaultdict(list)
        for rule in rules:
            self.by_kind[rule.kind].append(rule)
        self.only_code = only_code

    @classmethod
    def load(cls, *, only_code: str | None = None) -> RuleBook:
        return cls(AlertRule.objects.select_related("meter", "account"), only_code=only_code)

    def rule_for(self, kind: str, account: Account, meter: Meter | None) -> AlertRule | None:
        """The most specific rule of `kind` for the account and meter, if it is enabled."""
        best, best_key = None, None
        for rule in self.by_kind.get(kind, ()):
            if rule.scope == AlertRule.Scope.TIER and rule.tier != account.tier:
                continue
            if rule.scope == AlertRule.Scope.ACCOUNT and rule.account_id != account.pk:
                continue
            if rule.meter_id is not None and (meter is None or rule.meter_id != meter.pk):
                continue
            key = (SCOPE_RANK[rule.scope], rule.meter_id is not None, -rule.pk)
            if best_key is None or key > best_key:
                best, best_key = rule, key
        if best is None or (self.only_code and best.code != self.only_code):
            return None
        # The backtest may replay a rule before it is enabled.
        if not best.enabled and not self.only_code:
            return None
        return best

    def max_weeks(self) -> int:
        weeks = [int(r.param("weeks")) for k in ("spike", "drop") for r in self.by_kind.get(k, ())]
        return max(weeks, default=8)

    def max_window_days(self) -> int:
        return max((int(r.param("window_days")) for r in self.by_kind.get("drop", ())), default=28)

    def max_drop_hours(self) -> int:
        return max((int(r.param("hours")) for r in self.by_kind.get("drop", ())), default=48)


# --- loading a slice ---------------------------------------------------------------------------


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@dataclass
class SliceData:
    at: dt.datetime
    today: dict[int, dt.date]  # account id -> its local day containing `at`
    daily: dict[tuple[int, int], dict[dt.date, Decimal]]  # (account, meter) -> day -> value
    first_usage: dict[tuple[int, int], dt.date]
    so_far: dict[tuple[int, int], Decimal]
    last_usage_hour: dict[tuple[int, int], dt.datetime]


def slice_load(
    *, accounts: list[Account], meters: list[Meter], at: dt.datetime, book: RuleBook
) -> SliceData:
    ids = [a.pk for a in accounts]
    today = {a.pk: periods.local_date(at, a.timezone) for a in accounts}
    by_id = {m.pk: m for m in meters}
    data = SliceData(at=at, today=today, daily={}, first_usage={}, so_far={}, last_usage_hour={})
    if not ids or not meters:
        return data
    look_back = max(7 * book.max_weeks(), book.max_window_days()) + 1
    lo = min(today.values()) - dt.timedelta(days=look_back)
    hi = max(today.values())
    count_ids = [pk for pk, m in by_id.items() if m.aggregation == A.COUNT]
    params = {"ids": ids, "meters": list(by_id), "lo": lo, "hi": hi, "counts": count_ids}
    for account_id, meter_id, day, value in _fetch(
        """
        SELECT account_id, meter_id, day,
               CASE WHEN meter_id = ANY(%(counts)s) THEN count::numeric ELSE sum END
        FROM metering_rollupdaily
        WHERE account_id = ANY(%(ids)s) AND meter_id = ANY(%(meters)s) AND dim_key = ''
          AND day >= %(lo)s AND day <= %(hi)s AND count > 0
        """,
        params,
    ):
        data.daily.setdefault((account_id, meter_id), {})[day] = value
    # The first day with usage: the window's own first day with usage, unless that is later
    # than the window's start (a new meter, or usage that stopped and resumed), when older
    # usage is looked for; most pairs (usage on the window's first day) need no query.
    for key, days in data.daily.items():
        data.first_usage[key] = min(days)
    maybe_older = [key for key, first in data.first_usage.items() if first > lo]
    if maybe_older:
        for account_id, meter_id, first in _fetch(
            """
            SELECT r.account_id, r.meter_id, min(r.day)
            FROM metering_rollupdaily r
            JOIN unnest(%(accounts)s::bigint[], %(meters)s::bigint[]) AS p(a, m)
              ON r.account_id = p.a AND r.meter_id = p.m
            WHERE r.dim_key = '' AND r.day < %(lo)s AND r.count > 0
            GROUP BY r.account_id, r.meter_id
            """,
            {
                "accounts": [a for a, _ in maybe_older],
                "meters": [m for _, m in maybe_older],
                "lo": lo,
            },
        ):
            data.first_usage[(account_id, meter_id)] = first
    for (account_id, meter_id), days in data.daily.items():
        value = days.get(today[account_id])
        if value is not None:
            data.so_far[(account_id, meter_id)] = value
    _so_far_before_at(data, accounts=accounts, meters=meters, by_id=by_id)
    since = periods.hour_floor(at - dt.timedelta(hours=book.max_drop_hours()))
    for account_id, meter_id, hour in _fetch(
        """
        SELECT account_id, meter_id, max(hour) FROM metering_rolluphourly
        WHERE account_id = ANY(%(ids)s) AND meter_id = ANY(%(meters)s) AND dim_key = ''
          AND hour >= %(since)s AND hour <= %(at)s AND count > 0
        GROUP BY account_id, meter_id
        """,
        {**params, "since": since, "at": at},
    ):
        data.last_usage_hour[(account_id, meter_id)] = hour
    return data


def _so_far_before_at(data: SliceData, *, accounts, meters, by_id) -> None:
    """For an `at` inside a local day that has since ended (an evaluation or backtest as of a
    past time), today's usage so far comes from the hourly rollups before `at`: UTC hours, so in
    a zone whose offset is not whole hours the day's first partial hour counts whole."""
    now = timezone.now()
    by_zone: dict[str, list[int]] = defaultdict(list)
    for account in accounts:
        start, end = periods.day_bounds_utc(data.today[account.pk], account.timezone)
        if data.at < end and end <= now - LIVE_MARGIN and data.at > start:
            by_zone[account.timezone].append(account.pk)
    for tz, ids in by_zone.items():
        start = periods.hour_floor(periods.day_start_utc(periods.local_date(data.at, tz), tz))
        for key in [k for k in data.so_far if k[0] in ids]:
            del data.so_far[key]
        for account_id, meter_id, count, total in _fetch(
            """
            SELECT account_id, meter_id, sum(count), sum(sum) FROM metering_rolluphourly
            WHERE account_id = ANY(%(ids)s) AND meter_id = ANY(%(meters)s) AND dim_key = ''
              AND hour >= %(start)s AND hour < %(at)s AND count > 0
            GROUP BY account_id, meter_id
            """,
            {"ids": ids, "meters": list(by_id), "start": start, "at": data.at},
        ):
            value = Decimal(count) if by_id[meter_id].aggregation == A.COUNT else total
            data.so_far[(account_id, meter_id)] = value


# --- the rules ---------------------------------------------------------------------------------


_INT_PARAMS = {"weeks", "min_history_days", "min_samples", "window_days", "hours"}


def parsed(rule: AlertRule) -> dict:
    """The rule's effective parameters, numbers parsed once per rule instance (Decimal, or int
    for counts of days, hours and samples)."""
    cached = rule.__dict__.get("_parsed_params")
    if cached is None:
        cached = {}
        for name, value in rule.effective_params.items():
            if value is None:
                cached[name] = None
            elif name in _INT_PARAMS:
                cached[name] = int(value)
            else:
                cached[name] = Decimal(str(value))
        rule.__dict__["_parsed_params"] = cached
    return cached


def _history_days(data: SliceData, key: tuple[int, int], today: dt.date) -> int:
    first = data.first_usage.get(key)
    return -1 if first is None else (today - first).days


def spike_check(
    rule: AlertRule, account: Account, meter: Meter, data: SliceData
) -> tuple[Finding | None, Baseline | None]:
    key = (account.pk, meter.pk)
    today = data.today[account.pk]
    p = parsed(rule)
    if _history_days(data, key, today) < p["min_history_days"]:
        return None, None
    daily = data.daily.get(key, {})
    base = weekday_baseline(
        daily,
        on=today,
        weeks=p["weeks"],
        first_usage=data.first_usage.get(key),
        band_mads=p["band_mads"],
        min_samples=p["min_samples"],
    )
    if base is None or not base.median:
        return None, base  # no normal level to compare with
    observed = data.so_far.get(key, ZERO)
    multiple = ratio(observed, base.median)
    if multiple < p["multiple"] or observed <= base.high:
        return None, base
    level = Alert.Level.CRITICAL if multiple >= p["critical_multiple"] else Alert.Level.WARNING
    unit = meter.unit or "units"
    finding = Finding(
        rule=rule,
        account=account,
        meter=meter,
        period_key="",
        day=today,
        level=level,
        observed=observed,
        baseline=base.median,
        band_low=base.low,
        band_high=base.high,
        multiple=multiple,
        message=(
            f"{meter.code}: {_text(observed)} {unit} so far on {today:%a %Y-%m-%d}, "
            f"{multiple}x a normal {today:%A} ({_text(base.median)} {unit}, expected up to "
            f"{_text(base.high)} {unit})."
        ),
    )
    return finding, base


def drop_check(rule: AlertRule, account: Account, meter: Meter, data: SliceData) -> Finding | None:
    key = (account.pk, meter.pk)
    today = data.today[account.pk]
    p = parsed(rule)
    if _history_days(data, key, today) < p["min_history_days"]:
        return None
    daily = data.daily.get(key, {})
    window = p["window_days"]
    active = sum(1 for back in range(1, window + 1) if daily.get(today - back * DAY))
    if active < p["active_ratio"] * window:
        return None  # the meter is not normally in use every day
    hours = p["hours"]
    weeks = p["weeks"]
    first = data.first_usage.get(key)
    last_hour = data.last_usage_hour.get(key)
    since = periods.hour_floor(data.at - dt.timedelta(hours=hours))
    if last_hour is None or last_hour < since:
        normal_day = median([daily.get(today - back * DAY, ZERO) for back in range(1, window + 1)])
        return Finding(
            rule=rule,
            account=account,
            meter=meter,
            period_key="",
            day=today,
            level=Alert.Level.CRITICAL,
            observed=ZERO,
            baseline=normal_day,
            message=(
                f"{meter.code}: no usage for {hours} h, though it had usage on {active} of the "
                f"last {window} days (normally {_text(normal_day)} {meter.unit or 'units'} a "
                "day). The customer's "
                "integration may have stopped sending usage."
            ),
        )
    # Cheap rejection first: a day at or above below_ratio x the largest of its weekday's
    # samples cannot be under below_ratio x their median.
    yesterday = today - DAY
    value = daily.get(yesterday, ZERO)
    samples = [daily.get(yesterday - back * WEEK, ZERO) for back in range(1, weeks + 1)]
    if value >= p["below_ratio"] * max(samples):
        return None
    # Far below the weekday band on each of the last complete days (never today: it is partial).
    days = max(1, math.ceil(hours / 24))
    below = p["below_ratio"]
    checked = []
    for back in range(1, days + 1):
        day = today - back * DAY
        base = weekday_baseline(
            daily, on=day, weeks=weeks, first_usage=first, band_mads=Decimal(3), min_samples=3
        )
        value = daily.get(day, ZERO)
        if base is None or not base.median or value >= below * base.median:
            return None
        checked.append((day, value, base))
    day, value, base = checked[0]
    return Finding(
        rule=rule,
        account=account,
        meter=meter,
        period_key="",
        day=today,
        level=Alert.Level.WARNING,
        observed=value,
        baseline=base.median,
        band_low=base.low,
        band_high=base.high,
        multiple=ratio(value, base.median),
        message=(
            f"{meter.code}: the last {days} complete days were each under "
            f"{_text(below * 100)}% of their weekday normal (yesterday {_text(value)} "
            f"{meter.unit or 'units'} against {_text(base.median)})."
        ),
    )


@dataclass
class QuotaSource:
    period: BillingPeriod | None
    included: dict[int, Decimal]  # meter id -> included units per period


def _quota_sources(accounts: list[Account], at: dt.datetime) -> dict[int, QuotaSource]:
    open_periods = {
        p.account_id: p
        for p in BillingPeriod.objects.filter(
            account_id__in=[a.pk for a in accounts],
            state=BillingPeriod.State.OPEN,
            starts_at__lte=at,
            ends_at__gt=at,
        ).select_related("subscription")
    }
    included: dict[int, dict[int, Decimal]] = defaultdict(dict)
    plan_ids = {p.subscription.plan_id for p in open_periods.values()}
    for price in Price.objects.filter(plan_id__in=plan_ids, included_units__gt=0):
        included[price.plan_id][price.meter_id] = price.included_units
    return {
        account_id: QuotaSource(period=p, included=included.get(p.subscription.plan_id, {}))
        for account_id, p in open_periods.items()
    }


def _local_month(day: dt.date) -> tuple[dt.date, dt.date]:
    first = day.replace(day=1)
    end = (first + dt.timedelta(days=32)).replace(day=1)
    return first, end


def quota_check(
    rule_for, account: Account, source: QuotaSource | None, meters: dict[str, Meter], at
) -> list[Finding]:
    limits: dict[int, Decimal] = dict(source.included) if source else {}
    metadata_limits = (account.metadata or {}).get("limits") or {}
    if isinstance(metadata_limits, dict):
        for code, value in metadata_limits.items():
            meter = meters.get(code)
            try:
                limit = Decimal(str(value))
            except ArithmeticError:
                continue
            if meter is not None and limit > 0:
                limits[meter.pk] = limit
    if not limits:
        return []
    today = periods.local_date(at, account.timezone)
    if source and source.period:
        start, end = source.period.starts_at, source.period.ends_at
        period_key = source.period.start_date.isoformat()
    else:
        first, end_day = _local_month(today)
        start, end = periods.days_bounds_utc(first, end_day, account.timezone)
        period_key = f"{first:%Y-%m}"
    # Live, whole local days up to today's end (today's usage so far is all the daily rollup
    # holds: rollups only). As of a past time inside a day that has since ended, exactly up to
    # `at` (usage_totals_between counts the partial day from the events, as the rollups would).
    day_end = periods.day_bounds_utc(today, account.timezone)[1]
    past = day_end <= timezone.now() - LIVE_MARGIN
    until = min(end, at if past else day_end)
    by_pk = {m.pk: m for m in meters.values()}
    wanted = [by_pk[pk] for pk in limits if pk in by_pk]
    rules = {m.pk: rule_for("quota", account, m) for m in wanted}
    wanted = [m for m in wanted if rules[m.pk] is not None]
    if not wanted:
        return []
    usage = usage_totals_between(account=account, meters=wanted, start=start, end=until)
    findings = []
    for meter in wanted:
        rule = rules[meter.pk]
        used = usage.get(meter.pk) or ZERO
        limit = limits[meter.pk]
        percent = used * 100 / limit
        if percent >= Decimal(str(rule.param("critical_percent"))):
            level = Alert.Level.CRITICAL
        elif percent >= Decimal(str(rule.param("warning_percent"))):
            level = Alert.Level.WARNING
        else:
            continue
        findings.append(
            Finding(
                rule=rule,
                account=account,
                meter=meter,
                period_key=period_key,
                day=today,
                level=level,
                observed=used,
                period_usage=used,
                limit=limit,
                multiple=ratio(used, limit),
                message=(
                    f"{meter.code}: {_text(used)} {meter.unit or 'units'} used this period, "
                    f"{percent.quantize(Decimal('1'))}% of {_text(limit)} "
                    f"{meter.unit or 'units'}."
                ),
            )
        )
    return findings


def invoice_check(rule: AlertRule, account: Account, at: dt.datetime) -> Finding | None:
    try:
        invoice = projected_invoice_build(account=account, now=at)
    except ProjectionUnavailable:
        return None
    thresholds = []
    amount = rule.param("amount_minor")
    if amount:
        thresholds.append(int(amount))
    multiple = rule.param("multiple")
    previous = invoice.previous.total_minor if invoice.previous else None
    if multiple and previous:
        thresholds.append(int(Decimal(str(multiple)) * previous))
    if not thresholds:
        return None
    threshold = min(thresholds)
    projected = invoice.projected_total_minor
    if projected < threshold:
        return None
    critical = Decimal(str(rule.param("critical_factor"))) * threshold
    level = Alert.Level.CRITICAL if projected >= critical else Alert.Level.WARNING
    return Finding(
        rule=rule,
        account=account,
        meter=None,
        period_key=invoice.period_start.isoformat(),
        day=invoice.on,
        level=level,
        observed=Decimal(projected),
        baseline=Decimal(threshold),
        multiple=ratio(Decimal(projected), Decimal(previous)) if previous else None,
        projected_invoice_minor=projected,
        previous_invoice_minor=previous,
        currency=invoice.currency,
        message=(
            f"The projected invoice for the period from {invoice.period_start} is "
            f"{_money(projected, invoice.currency)}, past the threshold of "
            f"{_money(threshold, invoice.currency)}"
            + (f" (previous period {_money(previous, invoice.currency)})." if previous else ".")
        ),
    )


# --- a slice -----------------------------------------------------------------------------------


@dataclass
class SliceResult:
    findings: list[Finding]
    baselines: dict[tuple[int, int], Baseline]


def findings_for_accounts(
    *, accounts: list[Account], at: dt.datetime, book: RuleBook, meters: list[Meter] | None = None
) -> SliceResult:
    """What every applicable rule finds for these accounts as of `at` (nothing written)."""
    if meters is None:
        meters = list(Meter.objects.filter(active=True).order_by("code"))
    relative = [m for m in meters if m.aggregation in RELATIVE_AGGREGATIONS]
    data = slice_load(accounts=accounts, meters=relative, at=at, book=book)
    findings: list[Finding] = []
    baselines: dict[tuple[int, int], Baseline] = {}
    for account in accounts:
        for meter in relative:
            key = (account.pk, meter.pk)
            if key not in data.first_usage:
                continue  # never used: nothing relative to say
            rule = book.rule_for("spike", account, meter)
            if rule is not None:
                finding, base = spike_check(rule, account, meter, data)
                if base is not None:
                    baselines[key] = base
                if finding:
                    findings.append(finding)
            rule = book.rule_for("drop", account, meter)
            if rule is not None:
                finding = drop_check(rule, account, meter, data)
                if finding:
                    findings.append(finding)
    by_code = {m.code: m for m in meters}
    has_quota_rules = bool(book.by_kind.get("quota"))
    has_invoice_rules = bool(book.by_kind.get("invoice"))
    sources = _quota_sources(accounts, at) if has_quota_rules else {}
    for account in accounts:
        if has_quota_rules and (account.pk in sources or (account.metadata or {}).get("limits")):
            findings.extend(
                quota_check(book.rule_for, account, sources.get(account.pk), by_code, at)
            )
        if has_invoice_rules:
            rule = book.rule_for("invoice", account, None)
            if rule is not None:
                finding = invoice_check(rule, account, at)
                if finding:
                    findings.append(finding)
    return SliceResult(findings=findings, baselines=baselines)


# --- the context a finding carries -------------------------------------------------------------


def finding_context(finding: Finding, *, at: dt.datetime, data_baseline: Baseline | None) -> None:
    """Fill in the period's usage, the previous period's, the projected invoice and the
    dimension values that drove the change: a few queries, for findings only."""
    account, meter = finding.account, finding.meter
    period = (
        BillingPeriod.objects.filter(account=account, starts_at__lte=at, ends_at__gt=at)
        .select_related("subscription")
        .order_by("-starts_at")
        .first()
    )
    today = periods.local_date(at, account.timezone)
    day_end = periods.day_bounds_utc(today, account.timezone)[1]
    if period is not None:
        start, end = period.starts_at, min(period.ends_at, day_end)
        previous = period_previous(period=period)
        prev_bounds = (previous.starts_at, previous.ends_at) if previous else None
        if finding.previous_invoice_minor is None and previous and previous.total_minor:
            finding.previous_invoice_minor = previous.total_minor
        if finding.projected_invoice_minor is None:
            snapshot = (
                ProjectionSnapshot.objects.filter(period=period).order_by("-taken_on").first()
            )
            if snapshot is not None:
                finding.projected_invoice_minor = snapshot.projected_total_minor
                finding.currency = snapshot.currency
        finding.currency = finding.currency or period.currency
    else:
        first, _ = _local_month(today)
        start, end = periods.day_start_utc(first, account.timezone), day_end
        prev_first, _ = _local_month(first - DAY)
        prev_bounds = periods.days_bounds_utc(prev_first, first, account.timezone)
        finding.currency = finding.currency or account.currency
    if meter is None:
        return
    if finding.period_usage is None:
        finding.period_usage = usage_totals_between(
            account=account, meters=[meter], start=start, end=end
        ).get(meter.pk)
    if prev_bounds and finding.previous_period_usage is None:
        finding.previous_period_usage = usage_totals_between(
            account=account, meters=[meter], start=prev_bounds[0], end=prev_bounds[1]
        ).get(meter.pk)
    if finding.kind == AlertRule.Kind.SPIKE and data_baseline is not None:
        finding.drivers = spike_drivers(account, meter, today, data_baseline)


def spike_drivers(account: Account, meter: Meter, today: dt.date, base: Baseline, top: int = 5):
    """The dimension values that rose most today against their mean on the baseline days."""
    dims = list(meter.dimensions or [])
    if not dims:
        return []
    sample_days = [day for day, _ in base.samples]
    column = "count" if meter.aggregation == A.COUNT else "sum"
    rows = _fetch(
        f"""
        SELECT dim_key, dim_value, day, {column} FROM metering_rollupdaily
        WHERE account_id = %(a)s AND meter_id = %(m)s AND dim_key = ANY(%(dims)s)
          AND day = ANY(%(days)s)
        """,
        {"a": account.pk, "m": meter.pk, "dims": dims, "days": [today, *sample_days]},
    )
    now_values: dict[tuple, Decimal] = defaultdict(Decimal)
    before: dict[tuple, Decimal] = defaultdict(Decimal)
    for dim_key, dim_value, day, value in rows:
        if day == today:
            now_values[(dim_key, dim_value)] += Decimal(value)
        else:
            before[(dim_key, dim_value)] += Decimal(value)
    n = len(sample_days) or 1
    changes = []
    for key in set(now_values) | set(before):
        usual = before[key] / n
        rise = now_values[key] - usual
        if rise > 0:
            changes.append((rise, key, usual))
    changes.sort(key=lambda c: (-c[0], c[1]))
    return [
        {
            "dimension": dim_key,
            "value": dim_value or "(none)",
            "observed": _text(now_values[(dim_key, dim_value)]),
            "usual": _text(usual.quantize(Decimal("0.01"))),
            "increase": _text(rise.quantize(Decimal("0.01"))),
        }
        for rise, (dim_key, dim_value), usual in changes[:top]
    ]


def _text(value: Decimal | None) -> str:
    return "–" if value is None else decimal_text(value)


def _money(minor: int, currency: str) -> str:
    """With the currency's code, as the alert page shows amounts: '$1,550.00 USD'."""
    text = format_money(minor, currency)
    return text if currency in text else f"{text} {currency}"
