"""Why a cell's numbers differ: ranked hypotheses with their evidence. Pure functions.

The gap `ours − provider` splits in two: `ours − reported` (what our push ledger has not
handed over) and `reported − provider` (what the provider did with what it took). Each cause
explains part of one of them, in a fixed order, and what no cause explains is `unexplained`:

- ours − reported: `not_pushed` (ledger entries pending, failed or rejected), `too_old`
  (outside the provider's 35-day window, never sent), `billing_hold` (the account is held: its
  usage waits in our feed until a Manager releases the hold);
- reported − provider: `customer_mapping` (usage sent to another provider customer than the
  one the account maps to now, or no customer at all), `meter_config` (no provider meter, or
  one that aggregates differently from ours), `day_shift` (usage the provider put on the other
  side of the period's boundary: the period's gap minus the gap over the UTC days around it,
  where a shift of less than a day cancels), then `provider_missing` / `provider_extra` for
  the rest (the provider counts less / more than it acknowledged);
- `rounding` when the provider's number is ours rounded to fewer decimal places;
- `late_after_close` (closed periods): usage that arrived after the period was invoiced, which
  explains ours − invoiced.

Each cause's `score` is the share of the gap it explains (0..1); causes are ranked by score,
ties in the order above. A cause is a hypothesis with evidence, not a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from billing.pricing import format_quantity

ZERO = Decimal(0)
ORDER = (
    "customer_mapping",
    "meter_config",
    "not_pushed",
    "too_old",
    "billing_hold",
    "late_after_close",
    "day_shift",
    "provider_extra",
    "provider_missing",
    "rounding",
    "unexplained",
)


@dataclass
class DayNumbers:
    day: date  # UTC
    ours: Decimal | None
    reported: Decimal | None
    pending: Decimal
    provider: Decimal | None
    events: int = 0


@dataclass
class CellInput:
    additive: bool  # count and sum meters (sum of days); else a period value (last meter)
    unit: str
    ours: Decimal
    reported: Decimal
    provider: Decimal
    pending: Decimal = ZERO
    failed: Decimal = ZERO
    too_old: Decimal = ZERO
    invoiced: Decimal | None = None
    late_value: Decimal = ZERO
    late_events: int = 0
    days: list[DayNumbers] = field(default_factory=list)
    boundaries_aligned: bool = True  # both period bounds on UTC midnights
    customer_id: str = ""
    reported_by_customer: dict[str, Decimal] = field(default_factory=dict)
    provider_meter_aggregation: str | None = None  # None: no provider meter
    expected_aggregation: str = "sum"
    ledger_counts: dict[str, int] = field(default_factory=dict)
    held: bool = False  # a billing hold keeps the account's usage back from the provider


def _q(value: Decimal, unit: str) -> str:
    return f"{format_quantity(value)} {unit}".strip()


def _days_text(days: list[tuple[date, Decimal]], unit: str, limit: int = 6) -> str:
    shown = ", ".join(f"{d:%b %d} {'+' if v > 0 else ''}{format_quantity(v)}" for d, v in days)
    if len(days) > limit:
        shown = ", ".join(
            f"{d:%b %d} {'+' if v > 0 else ''}{format_quantity(v)}" for d, v in days[:limit]
        )
        shown += f" and {len(days) - limit} more day(s)"
    return shown


def _rounds_to(ours: Decimal, provider: Decimal) -> int | None:
    """The decimal places `provider` is `ours` rounded to, if it is (0 to 6)."""
    if ours == provider:
        return None
    for places in range(0, 7):
        step = Decimal(1).scaleb(-places)
        if (
            ours.quantize(step) == provider
            or ours.quantize(step, rounding="ROUND_DOWN") == provider
        ):
            return places
    return None


def analyse(cell: CellInput) -> list[dict]:
    """The ranked causes of a cell's gap: [{"code", "score", "amount", "sentence",
    "evidence"}]; empty when the cell matches."""
    unit = cell.unit
    gap = cell.ours - cell.provider
    invoiced_gap = None if cell.invoiced is None else cell.ours - cell.invoiced
    if gap == 0 and not invoiced_gap:
        return []
    found: list[dict] = []

    def add(code: str, amount: Decimal, base: Decimal, sentence: str, evidence: dict) -> None:
        if amount == 0 or base == 0:
            return
        score = min(abs(amount) / abs(base), Decimal(1))
        found.append(
            {
                "code": code,
                "score": str(score.quantize(Decimal("0.0001"))),
                "amount": str(amount),
                "sentence": sentence,
                "evidence": evidence,
            }
        )

    rounding_places = _rounds_to(cell.ours, cell.provider) if gap and abs(gap) < 1 else None
    if rounding_places is not None:
        add(
            "rounding",
            gap,
            gap,
            f"The provider shows {_q(cell.provider, unit)}: our {_q(cell.ours, unit)} rounded to "
            f"{rounding_places} decimal place(s).",
            {"ours": str(cell.ours), "provider": str(cell.provider), "places": rounding_places},
        )
        gap_left = ZERO
    else:
        gap_left = gap

    # --- ours − reported: what the ledger has not handed over --------------------------------
    to_report = cell.ours - cell.reported if gap_left else ZERO
    unsent = cell.pending + cell.failed
    if to_report and unsent:
        amount = unsent if abs(unsent) <= abs(to_report) else to_report
        add(
            "not_pushed",
            amount,
            gap,
            f"{_q(unsent, unit)} of this period are still in the push ledger, not taken by the "
            f"provider ({format_quantity(cell.pending)} pending, "
            f"{format_quantity(cell.failed)} failed or rejected).",
            {
                "pending": str(cell.pending),
                "failed": str(cell.failed),
                "ledger_entries": cell.ledger_counts,
            },
        )
        to_report -= amount
    if to_report and cell.too_old:
        amount = cell.too_old if abs(cell.too_old) <= abs(to_report) else to_report
        add(
            "too_old",
            amount,
            gap,
            f"{_q(cell.too_old, unit)} were older than the provider's 35-day window when we "
            f"tried to send them, so they were recorded as too old and never sent.",
            {"too_old": str(cell.too_old)},
        )
        to_report -= amount
    if to_report and cell.held:
        add(
            "billing_hold",
            to_report,
            gap,
            f"The account is on a billing hold: {_q(to_report, unit)} of this period are kept "
            f"back from the provider until a Manager releases the hold (nothing is lost).",
            {"held": str(to_report)},
        )
        to_report = ZERO
    unexplained = to_report

    # --- reported − provider: what the provider did with what it took ------------------------
    to_explain = cell.reported - cell.provider if gap_left else ZERO
    if to_explain and not cell.customer_id:
        add(
            "customer_mapping",
            to_explain,
            gap,
            "The account has no customer at the provider, so the provider's numbers for it "
            "cannot be read (and usage cannot reach it).",
            {"customer_id": ""},
        )
        to_explain = ZERO
    elsewhere = {c: v for c, v in cell.reported_by_customer.items() if c and c != cell.customer_id}
    if to_explain and elsewhere:
        sent = sum(elsewhere.values(), ZERO)
        amount = sent if abs(sent) <= abs(to_explain) else to_explain
        add(
            "customer_mapping",
            amount,
            gap,
            f"{_q(sent, unit)} were sent to provider customer(s) "
            f"{', '.join(sorted(elsewhere))}, but the account now maps to "
            f"{cell.customer_id}.",
            {
                "customer_id": cell.customer_id,
                "sent_to": {c: str(v) for c, v in sorted(elsewhere.items())},
            },
        )
        to_explain -= amount
    if to_explain and (
        cell.provider_meter_aggregation is None
        or cell.provider_meter_aggregation != cell.expected_aggregation
    ):
        if cell.provider_meter_aggregation is None:
            sentence = "Our meter has no meter at the provider, so nothing of it is recorded there."
        else:
            sentence = (
                f"The provider's meter aggregates by {cell.provider_meter_aggregation}, ours "
                f"needs {cell.expected_aggregation}."
            )
        add(
            "meter_config",
            to_explain,
            gap,
            sentence,
            {
                "provider_aggregation": cell.provider_meter_aggregation,
                "expected_aggregation": cell.expected_aggregation,
            },
        )
        to_explain = ZERO
    if to_explain and cell.additive and cell.days:
        day_gaps = [
            (d.day, (d.reported or ZERO) - (d.provider or ZERO))
            for d in cell.days
            if (d.reported or ZERO) != (d.provider or ZERO)
        ]
        window_gap = sum((v for _, v in day_gaps), ZERO)
        moved = to_explain - window_gap
        both_signs = any(v > 0 for _, v in day_gaps) and any(v < 0 for _, v in day_gaps)
        if moved and (both_signs or not cell.boundaries_aligned):
            amount = moved if abs(moved) <= abs(to_explain) else to_explain
            direction = "out of" if moved > 0 else "into"
            add(
                "day_shift",
                amount,
                gap,
                f"{_q(abs(amount), unit)} were moved {direction} this period by the provider: "
                f"around the period's boundary its days differ from ours in opposite directions "
                f"({_days_text(day_gaps, unit) or 'within the boundary day'}), which points to "
                f"a clock skew or a time-zone boundary.",
                {
                    "period_gap": str(to_explain),
                    "window_gap": str(window_gap),
                    "day_gaps": {str(d): str(v) for d, v in day_gaps},
                },
            )
            to_explain -= amount
        if to_explain:
            missing = [(d, v) for d, v in day_gaps if (v > 0) == (to_explain > 0)]
            _provider_side(add, to_explain, gap, unit, missing)
            to_explain = ZERO
    if to_explain:
        _provider_side(add, to_explain, gap, unit, [])
        to_explain = ZERO

    # --- ours − invoiced: usage that arrived after the invoice ---------------------------------
    if invoiced_gap and cell.late_value:
        amount = cell.late_value if abs(cell.late_value) <= abs(invoiced_gap) else invoiced_gap
        add(
            "late_after_close",
            amount,
            invoiced_gap,
            f"{cell.late_events} event(s) ({_q(cell.late_value, unit)}) of this period arrived "
            f"after it was closed and invoiced; the invoice shows "
            f"{_q(cell.invoiced, unit)}, we now count {_q(cell.ours, unit)}.",
            {"late_events": cell.late_events, "late_value": str(cell.late_value)},
        )
        invoiced_unexplained = invoiced_gap - amount
    else:
        invoiced_unexplained = invoiced_gap or ZERO

    if unexplained:
        add(
            "unexplained",
            unexplained,
            gap,
            f"{_q(unexplained, unit)} of our usage are not in the push ledger yet (still being "
            f"rolled up or queued for the push), or the ledger disagrees with our events.",
            {"ours": str(cell.ours), "reported": str(cell.reported)},
        )
    if not found and (gap or invoiced_unexplained):
        base = gap or invoiced_unexplained
        add(
            "unexplained",
            base,
            base,
            f"Our {_q(cell.ours, unit)} differ from the provider's {_q(cell.provider, unit)} "
            f"and no known cause fits.",
            {"ours": str(cell.ours), "provider": str(cell.provider)},
        )
    found.sort(key=lambda c: (-Decimal(c["score"]), ORDER.index(c["code"])))
    return found


def _provider_side(add, amount: Decimal, gap: Decimal, unit: str, days) -> None:
    shown = _days_text(days, unit)
    if amount > 0:
        add(
            "provider_missing",
            amount,
            gap,
            f"The provider acknowledged {_q(amount, unit)} more than its summary shows: it "
            f"lost or has not yet processed them" + (f" (by UTC day: {shown})." if shown else "."),
            {"missing": str(amount), "days": {str(d): str(v) for d, v in days}},
        )
    else:
        add(
            "provider_extra",
            amount,
            gap,
            f"The provider counts {_q(-amount, unit)} more than we sent: duplicates"
            + (f" (by UTC day: {shown})." if shown else "."),
            {"extra": str(-amount), "days": {str(d): str(v) for d, v in days}},
        )
