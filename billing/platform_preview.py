"""Our projection next to the billing platform's own upcoming-invoice preview, so a pricing
configuration that drifted between Meterops and the platform is seen before the period closes.

What is compared: the platforms preview the invoice of the usage they hold so far (Stripe's
`create_preview`, Orb's upcoming invoice, Lago's current usage), so ours is the projection's
"to date" total (the invoice if the period closed after today, priced by our engine on our
usage so far), not the forecast at period end (shown beside it, never compared). Exact
equality in minor units is a match; any other difference "differs".

Lines are paired by our meter (the adapter names it, or the line's price is one of our prices
through `Price.provider_price_id`); lines that pair with nothing stay on their own side. The
sentence names the line that differs most and why: the platform holds other usage (not pushed
yet, or a mismatch reconciliation will show), or the same usage priced differently (a pricing
configuration drift).

The platform's answer is cached briefly (PREVIEW_CACHE_SECONDS, keyed by platform and customer)
so the page stays fast; an error or timeout is the state "unavailable" with its message, never
an exception; a platform without a preview (the simulated one) has no comparison at all.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import logging
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from billing.explain import humanize_quantity, percent_text, signed_money
from billing.models import Price, ProviderCustomer
from billing.money import format_amount, format_money, from_minor_units
from billing.pricing import LineKind, PriceModel
from billing.projection import ProjectedInvoice, ProjectionUnavailable, projected_invoice_build
from billing.providers import get_provider
from billing.providers.base import (
    BillingProvider,
    InvoiceData,
    PlatformReads,
    ProviderError,
)
from billing.providers.retry import RetryPolicy
from metering.models import Account

logger = logging.getLogger(__name__)

PREVIEW_CACHE_SECONDS = 300
# A page waits at most about this long for the platform: one request, one retry.
PAGE_TIMEOUT_SECONDS = 5.0
PAGE_MAX_RETRIES = 1
# Unit prices in the sentence: enough places for fractions of a cent.
_UNIT_PLACES = Decimal("0.000001")
_WIDE = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


class PreviewStatus(enum.StrEnum):
    MATCH = "match"  # the same total, to the minor unit
    DIFFERS = "differs"
    UNAVAILABLE = "unavailable"  # the platform failed or did not answer in time
    NO_PREVIEW = "no_preview"  # the platform has nothing upcoming for the customer
    NO_CUSTOMER = "no_customer"  # the account is not a customer there yet
    NO_PROJECTION = "no_projection"  # we have no projection (no subscription or open period)


@dataclass(frozen=True)
class PreviewLine:
    """One line of the comparison: ours and the platform's, paired by meter where they can be."""

    key: str
    title: str
    currency: str
    meter_code: str = ""
    unit: str = ""
    ours_minor: int | None = None
    theirs_minor: int | None = None
    ours_quantity: Decimal | None = None
    theirs_quantity: Decimal | None = None
    ours_unit_price: Decimal | None = None  # per-unit prices only (currency units)

    @property
    def difference_minor(self) -> int:
        """Theirs minus ours (a missing side counts as zero)."""
        return (self.theirs_minor or 0) - (self.ours_minor or 0)

    @property
    def theirs_unit_price(self) -> Decimal | None:
        """The platform's amount per unit (currency units), when it billed a quantity."""
        if self.theirs_minor is None or not self.theirs_quantity:
            return None
        return _unit(self.theirs_minor, self.theirs_quantity, self.currency)


@dataclass(frozen=True)
class PlatformPreviewComparison:
    platform: str  # the adapter's name, e.g. "stripe"
    platform_label: str  # "Stripe"
    status: PreviewStatus
    currency: str = ""
    ours_minor: int | None = None  # the projection to date
    ours_projected_minor: int | None = None  # the forecast at period end (not compared)
    theirs_minor: int | None = None
    theirs_currency: str = ""
    period_start: dt.date | None = None
    period_end: dt.date | None = None  # exclusive
    theirs_period_start: dt.datetime | None = None
    theirs_period_end: dt.datetime | None = None
    lines: tuple[PreviewLine, ...] = ()
    read_at: dt.datetime | None = None  # when the platform answered (UTC)
    cached: bool = False
    customer_id: str = ""
    message: str = ""  # why there is no comparison (unavailable, no customer, ...)
    sentence: str = ""

    @property
    def difference_minor(self) -> int | None:
        """Theirs minus ours, in minor units."""
        if self.ours_minor is None or self.theirs_minor is None:
            return None
        return self.theirs_minor - self.ours_minor

    @property
    def difference_percent(self) -> Decimal | None:
        """The difference against ours, in percent (one decimal, half up); None on a zero base."""
        if self.difference_minor is None or not self.ours_minor:
            return None
        with decimal.localcontext(_WIDE):
            percent = Decimal(self.difference_minor) * 100 / Decimal(self.ours_minor)
        return percent.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


# --- which platform, and may it preview ------------------------------------------------------


def preview_provider() -> BillingProvider:
    """The configured platform, bounded for a page: a short timeout where the adapter takes
    one, one retry, never a long Retry-After wait."""
    name = settings.BILLING_PROVIDER
    options = {"timeout": PAGE_TIMEOUT_SECONDS} if name == "stripe" else {}
    provider = get_provider(name, **options)
    client = getattr(provider, "client", None)
    if hasattr(client, "with_options"):
        # The Stainless-generated SDKs (orb-billing, metronome-sdk) take a timeout per client.
        provider.client = client.with_options(timeout=PAGE_TIMEOUT_SECONDS)
    if isinstance(provider, RetryPolicy):
        provider.max_retries = PAGE_MAX_RETRIES
        provider.backoff_cap = min(provider.backoff_cap, 1.0)
        provider.retry_after_cap = min(provider.retry_after_cap, 2.0)
    return provider


def platform_has_preview(provider: BillingProvider | None = None) -> bool:
    """Whether the configured platform offers an upcoming-invoice preview at all (the
    simulated one does not). A platform that cannot even be built (a missing key) counts as
    one with a preview: the section then says what is wrong."""
    if provider is None:
        try:
            provider = get_provider()
        except ProviderError:
            return True
    return type(provider).upcoming_invoice is not PlatformReads.upcoming_invoice


def _label(provider: BillingProvider) -> str:
    return getattr(provider, "platform", "") or provider.name.title()


def _customer_id(provider: BillingProvider, account: Account) -> str:
    mapping = (
        ProviderCustomer.objects.filter(provider=provider.name, account=account)
        .values_list("provider_customer_id", flat=True)
        .first()
    )
    if mapping:
        return mapping
    if provider.stores_customer_on_account:
        return account.provider_customer_id
    return provider.lookup_customer(
        external_id=account.external_id, existing_id=account.provider_customer_id
    )


def _cache_key(provider: BillingProvider, customer_id: str) -> str:
    return f"billing:platform-preview:{provider.name}:{customer_id}"


def _read_preview(
    provider: BillingProvider, customer_id: str, *, now: dt.datetime, use_cache: bool
) -> tuple[InvoiceData | None, dt.datetime, bool]:
    """(the platform's preview or None, when it was read, whether from the cache)."""
    key = _cache_key(provider, customer_id)
    if use_cache:
        try:
            hit = cache.get(key)
        except Exception:  # an unreachable cache only costs the shortcut
            logger.warning("platform preview cache unreadable", exc_info=True)
            hit = None
        if hit is not None:
            return hit[0], hit[1], True
    invoice = provider.upcoming_invoice(customer_id=customer_id)
    try:
        cache.set(key, (invoice, now), PREVIEW_CACHE_SECONDS)
    except Exception:
        logger.warning("platform preview cache unwritable", exc_info=True)
    return invoice, now, False


# --- the comparison ------------------------------------------------------------------------------


def _unit(amount_minor: int, quantity: Decimal, currency: str) -> Decimal:
    with decimal.localcontext(_WIDE):
        value = from_minor_units(amount_minor, currency) / quantity
    return value.quantize(_UNIT_PLACES).normalize()


def _our_lines(invoice: ProjectedInvoice) -> dict[str, PreviewLine]:
    lines: dict[str, PreviewLine] = {}
    for line in invoice.lines:
        if line.kind is LineKind.USAGE:
            spec = line.spec
            unit_price = (
                spec.unit_price
                if spec is not None
                and spec.model == PriceModel.PER_UNIT
                and not spec.included_units
                and not spec.flat_fee
                else None
            )
            key = f"meter:{line.meter_code}"
            lines[key] = PreviewLine(
                key=key,
                title=line.title,
                currency=invoice.currency,
                meter_code=line.meter_code,
                unit=line.unit,
                ours_minor=line.amount_to_date_minor,
                ours_quantity=line.units_to_date,
                ours_unit_price=unit_price,
            )
        else:
            key = str(line.kind)
            previous = lines.get(key)
            lines[key] = PreviewLine(
                key=key,
                title=line.title if previous is None else previous.title,
                currency=invoice.currency,
                ours_minor=line.amount_to_date_minor + (previous.ours_minor if previous else 0),
            )
    return lines


def _their_key(line, price_meters: dict[str, str]) -> str:
    code = line.meter_code or price_meters.get(line.price_id, "")
    if code:
        return f"meter:{code}"
    return f"platform:{line.line_id or line.price_id or line.description}"


def _pair(invoice: ProjectedInvoice, preview: InvoiceData) -> tuple[PreviewLine, ...]:
    ours = _our_lines(invoice)
    price_ids = {line.price_id for line in preview.lines if line.price_id and not line.meter_code}
    price_meters = (
        dict(
            Price.objects.filter(provider_price_id__in=price_ids)
            .exclude(provider_price_id="")
            .values_list("provider_price_id", "meter__code")
        )
        if price_ids
        else {}
    )
    paired = dict(ours)
    order = list(ours)
    for line in preview.lines:
        key = _their_key(line, price_meters)
        current = paired.get(key) or PreviewLine(
            key=key,
            title=line.description or line.price_id or "Platform line",
            currency=invoice.currency,
            meter_code=key.removeprefix("meter:") if key.startswith("meter:") else "",
        )
        if key not in paired:
            order.append(key)
        quantity = current.theirs_quantity
        if line.quantity is not None:
            quantity = (quantity or Decimal(0)) + line.quantity
        paired[key] = replace(
            current,
            theirs_minor=(current.theirs_minor or 0) + line.amount_minor,
            theirs_quantity=quantity,
        )
    # A platform line on no meter with the very amount of one of our fixed lines (the plan
    # fee, the minimum true-up) is that line there.
    for key in list(order):
        line = paired[key]
        if not key.startswith("platform:"):
            continue
        for our_key in (str(LineKind.PLAN_FEE), str(LineKind.MINIMUM_COMMITMENT)):
            ours_line = paired.get(our_key)
            if (
                ours_line is not None
                and ours_line.theirs_minor is None
                and ours_line.ours_minor == line.theirs_minor
            ):
                paired[our_key] = replace(
                    ours_line,
                    theirs_minor=line.theirs_minor,
                    theirs_quantity=line.theirs_quantity,
                )
                order.remove(key)
                break
    return tuple(paired[key] for key in order)


def _quantity_text(value: Decimal | None, unit: str) -> str:
    if value is None:
        return "none"
    text = humanize_quantity(value)
    return f"{text} {unit}".strip()


def _line_reason(line: PreviewLine, label: str, currency: str) -> str:
    name = line.title or line.meter_code or line.key
    if line.ours_minor is None:
        return f"{name} is billed only there ({format_money(line.theirs_minor or 0, currency)})"
    if line.theirs_minor is None:
        return (
            f"{name} is not on {label}'s preview ({format_money(line.ours_minor, currency)} here)"
        )
    if (
        line.ours_quantity is not None
        and line.theirs_quantity is not None
        and line.ours_quantity != line.theirs_quantity
    ):
        return (
            f"{label} holds {_quantity_text(line.theirs_quantity, line.unit)} of {name}, we "
            f"have {_quantity_text(line.ours_quantity, line.unit)} (usage not pushed yet, or a "
            "mismatch reconciliation will show)"
        )
    theirs_unit = line.theirs_unit_price
    if theirs_unit is not None and line.ours_quantity:
        ours_unit = line.ours_unit_price
        if ours_unit is None:
            ours_unit = _unit(line.ours_minor, line.ours_quantity, currency)
        return (
            f"{name} is priced {format_amount(theirs_unit, currency)}/unit there vs "
            f"{format_amount(ours_unit, currency)} here"
        )
    return (
        f"{name} is {format_money(line.theirs_minor, currency)} there vs "
        f"{format_money(line.ours_minor, currency)} here"
    )


def _sentence(comparison: PlatformPreviewComparison) -> str:
    label, cur = comparison.platform_label, comparison.currency
    difference = comparison.difference_minor
    if comparison.status is PreviewStatus.MATCH:
        return (
            f"{label}'s preview matches our projection so far: "
            f"{format_money(comparison.ours_minor, cur)}."
        )
    if comparison.theirs_currency and comparison.theirs_currency != cur:
        return (
            f"{label}'s preview is in {comparison.theirs_currency}, our projection in {cur}: "
            "the plan's currency differs there."
        )
    direction = "more" if difference > 0 else "less"
    head = (
        f"{label}'s preview is {format_money(abs(difference), cur)} {direction} than our "
        "projection so far"
    )
    differing = sorted(
        (line for line in comparison.lines if line.difference_minor),
        key=lambda line: -abs(line.difference_minor),
    )
    if not differing:
        return head + "."
    reason = _line_reason(differing[0], label, cur)
    more = len(differing) - 1
    tail = f" (and {more} more line{'s' if more > 1 else ''})" if more else ""
    return f"{head}: {reason}{tail}."


def platform_preview_comparison(
    account: Account,
    *,
    now: dt.datetime | None = None,
    use_cache: bool = True,
    provider: BillingProvider | None = None,
) -> PlatformPreviewComparison | None:
    """Our projection so far against the platform's preview of the account's next invoice.

    None when the platform has no preview at all (nothing to show). Never raises for the
    platform's sake: a failure, a refusal or a timeout is PreviewStatus.UNAVAILABLE with the
    platform's message."""
    now = now or timezone.now()
    try:
        provider = provider or preview_provider()
    except ProviderError as exc:
        name = settings.BILLING_PROVIDER
        return PlatformPreviewComparison(
            platform=name,
            platform_label=name.title(),
            status=PreviewStatus.UNAVAILABLE,
            message=str(exc),
        )
    if not platform_has_preview(provider):
        return None
    base = {"platform": provider.name, "platform_label": _label(provider)}
    try:
        invoice = projected_invoice_build(account=account, now=now, with_top=False)
    except ProjectionUnavailable as exc:
        return PlatformPreviewComparison(
            **base, status=PreviewStatus.NO_PROJECTION, message=exc.message
        )
    base.update(
        currency=invoice.currency,
        ours_minor=invoice.to_date_total_minor,
        ours_projected_minor=invoice.projected_total_minor,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
    )
    try:
        customer_id = _customer_id(provider, account)
        if not customer_id:
            return PlatformPreviewComparison(
                **base,
                status=PreviewStatus.NO_CUSTOMER,
                message=(
                    f"{account.external_id} is not a {base['platform_label']} customer yet "
                    "(it becomes one when its usage is first pushed)."
                ),
            )
        preview, read_at, cached = _read_preview(
            provider, customer_id, now=now, use_cache=use_cache
        )
    except Exception as exc:  # whatever the platform or its SDK raised
        if not isinstance(exc, ProviderError):
            logger.warning("platform preview failed", exc_info=True)
        return PlatformPreviewComparison(
            **base,
            status=PreviewStatus.UNAVAILABLE,
            message=str(exc)
            if isinstance(exc, ProviderError)
            else f"{exc.__class__.__name__}: {exc}",
        )
    if preview is None:
        return PlatformPreviewComparison(
            **base,
            status=PreviewStatus.NO_PREVIEW,
            customer_id=customer_id,
            read_at=read_at,
            cached=cached,
            message=(
                f"{base['platform_label']} has no upcoming invoice for {customer_id} (no "
                "subscription there that will invoice again)."
            ),
        )
    theirs_currency = preview.currency.upper()
    same_currency = theirs_currency == invoice.currency.upper()
    comparison = PlatformPreviewComparison(
        **base,
        status=(
            PreviewStatus.MATCH
            if same_currency and preview.total_minor == invoice.to_date_total_minor
            else PreviewStatus.DIFFERS
        ),
        theirs_minor=preview.total_minor,
        theirs_currency=theirs_currency,
        theirs_period_start=preview.period_start,
        theirs_period_end=preview.period_end,
        lines=_pair(invoice, preview),
        read_at=read_at,
        cached=cached,
        customer_id=customer_id,
    )
    return replace(comparison, sentence=_sentence(comparison))


def difference_text(comparison: PlatformPreviewComparison) -> str:
    """'+$1.20 (+13%)', '-$0.40', 'none'."""
    difference = comparison.difference_minor
    if difference is None:
        return ""
    if not difference:
        return "none"
    text = signed_money(difference, comparison.currency)
    if comparison.ours_minor:
        text += f" ({percent_text(comparison.theirs_minor, comparison.ours_minor)})"
    return text


__all__ = [
    "PREVIEW_CACHE_SECONDS",
    "PlatformPreviewComparison",
    "PreviewLine",
    "PreviewStatus",
    "difference_text",
    "platform_has_preview",
    "platform_preview_comparison",
    "preview_provider",
]
