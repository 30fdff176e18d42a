"""The billing-provider adapter interface and the values that cross it.

An adapter speaks to one billing platform. It knows nothing of our ledger or models beyond the
plain values here: the push service (billing.services.push) decides what to send and records
the answers; the pull service (billing.services.pull) stores what the adapter lists.

Provider facts every adapter honours (Stripe's, which the simulated provider mirrors):

- meters aggregate only sum, count or last;
- a meter event identifier is unique for only about 24 hours;
- a usage timestamp must be within the past 35 days and at most 5 minutes ahead;
- daily usage summaries are UTC days;
- a meter event value has at most 15 significant digits (since the pinned API version; more
  is a 400 on v1 and a silent drop, reported later, on the v2 stream): `split_value` cuts a
  sum meter's value into parts that each fit and add up exactly.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

from metering.decimals import decimal_text

# Stripe accepts meter event timestamps "within the past 35 calendar days".
PUSH_WINDOW = timedelta(days=35)
# ... and "up to 5 minutes in the future".
FUTURE_TOLERANCE = timedelta(minutes=5)
# Stripe enforces identifier uniqueness "within a rolling period of at least 24 hours".
IDENTIFIER_WINDOW = timedelta(hours=24)
# Stripe refuses meter event values "with more than 15 significant digits".
MAX_VALUE_DIGITS = 15


class ProviderError(Exception):
    """The provider could not be reached or refused the request as a whole."""


class ProviderUnavailable(ProviderError):
    """A transient failure (rate limit past our retries, 5xx, network): try again later."""


class ProviderMisconfigured(ProviderError):
    """Authentication or configuration is wrong: retrying will not help."""


class WebhookSignatureError(ValueError):
    """A webhook's signature is missing, wrong or too old."""


class ItemStatus(enum.StrEnum):
    RECORDED = "recorded"  # the provider recorded it (synchronous answer)
    ACCEPTED = "accepted"  # accepted for asynchronous processing (v2 meter event stream)
    DUPLICATE = "duplicate"  # the provider already has this identifier
    TOO_OLD = "too_old"  # outside the provider's timestamp window
    REJECTED = "rejected"  # refused for good (bad customer, meter, value)
    RETRY = "retry"  # transient failure: send again later with the same identifier


@dataclass(frozen=True)
class UsageItem:
    """One value for one provider meter and customer, as the provider receives it."""

    identifier: str
    idempotency_key: str
    event_name: str
    customer_id: str
    value: Decimal
    timestamp: datetime

    @property
    def value_text(self) -> str:
        return decimal_text(self.value)

    @property
    def unix_timestamp(self) -> int:
        return int(self.timestamp.timestamp())

    def as_payload(self) -> dict:
        """The JSON we keep in the ledger: enough to send the very same item again."""
        return {
            "event_name": self.event_name,
            "identifier": self.identifier,
            "idempotency_key": self.idempotency_key,
            "payload": {"stripe_customer_id": self.customer_id, "value": self.value_text},
            "timestamp": self.unix_timestamp,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> UsageItem:
        return cls(
            identifier=payload["identifier"],
            idempotency_key=payload["idempotency_key"],
            event_name=payload["event_name"],
            customer_id=payload["payload"]["stripe_customer_id"],
            value=Decimal(payload["payload"]["value"]),
            timestamp=datetime.fromtimestamp(int(payload["timestamp"]), tz=UTC),
        )


@dataclass(frozen=True)
class ItemResult:
    identifier: str
    status: ItemStatus
    code: str = ""
    message: str = ""
    response: dict = field(default_factory=dict)
    # RETRY only: the idempotency key the next attempt must use (the provider saved an
    # answer for the old one that a retry would only replay).
    next_idempotency_key: str = ""


@dataclass(frozen=True)
class MeterSpec:
    """What we ask for when making sure a provider meter exists."""

    meter_code: str
    display_name: str
    event_name: str
    aggregation: str  # "sum" | "count" | "last"


@dataclass(frozen=True)
class ProviderMeterInfo:
    provider_meter_id: str
    event_name: str
    aggregation: str


@dataclass(frozen=True)
class MeterSummary:
    """The provider's aggregate of one meter for one customer over [start, end) (a UTC day)."""

    provider_meter_id: str
    customer_id: str
    start: datetime
    end: datetime
    value: Decimal


@dataclass(frozen=True)
class InvoiceLineData:
    line_id: str
    description: str
    quantity: Decimal | None
    amount_minor: int
    price_id: str
    period_start: datetime | None
    period_end: datetime | None
    raw: dict
    # Our meter's code when the adapter knows it (else the pull maps price_id to a Price).
    meter_code: str = ""


@dataclass(frozen=True)
class InvoiceData:
    invoice_id: str
    customer_id: str
    number: str
    status: str
    currency: str
    total_minor: int
    period_start: datetime | None
    period_end: datetime | None
    created: datetime | None
    lines: list[InvoiceLineData]
    raw: dict


# --- [9] the platform's own rules, as data, and the generalised reads ------------------------
#
# Stripe's shape was built into the push ledger (a 35-day window, identifiers kept 24 hours,
# 15 significant digits, UTC-day summaries). Each adapter now declares its platform's rules
# in a PlatformRules; the push ledger enforces from it what the platform does not (it
# refuses usage outside the accepted window before sending it, and resends a stale entry
# blindly only where the platform keeps keys for good).


@dataclass(frozen=True)
class PlatformRules:
    """What a billing platform documents about receiving usage, as the ledger needs it."""

    # The field of a usage event the platform deduplicates on (Stripe `identifier`, Orb
    # `idempotency_key`, Lago/Metronome `transaction_id`, Amberflo `uniqueId`).
    key_field: str
    # How long the platform remembers a key; None: for good (a resend, however late, is
    # counted once).
    key_retention: timedelta | None
    # The oldest usage timestamp accepted (now - past_window); None: no limit.
    past_window: timedelta | None
    # How far ahead of the platform's clock a timestamp may be.
    future_tolerance: timedelta
    # At most this many events per usage request.
    batch_size: int
    # The documented request rate (requests per second) for usage; None: not published.
    rate_limit_per_second: int | None
    # The finest read-back window: "utc_day" (Stripe), "customer_day" (days at the customer's
    # midnight; Meterops creates the customer in UTC so they are UTC days), "period" ...
    read_window: str
    # Significant digits a value may have; None: no documented limit.
    max_value_digits: int | None = MAX_VALUE_DIGITS
    # How usage is corrected at the platform, in a sentence (for the README and the admin).
    corrections: str = ""
    # Usage older than `past_window` the platform still takes through a backfill (Orb), back to
    # now - backfill_window; None: no backfill, `past_window` is the limit.
    backfill_window: timedelta | None = None

    @property
    def oldest_accepted(self) -> timedelta | None:
        """How far back usage reaches the platform by any means (None: no limit)."""
        if self.past_window is None or self.backfill_window is None:
            return self.past_window
        return max(self.past_window, self.backfill_window)


STRIPE_RULES = PlatformRules(
    key_field="identifier",
    key_retention=IDENTIFIER_WINDOW,
    past_window=PUSH_WINDOW,
    future_tolerance=FUTURE_TOLERANCE,
    batch_size=100,
    rate_limit_per_second=None,
    read_window="utc_day",
    max_value_digits=MAX_VALUE_DIGITS,
    corrections="negative meter event values (or a meter event adjustment cancelling an event)",
)


# Our adjustment reason codes as Stripe's credit note reasons (Stripe knows only these four;
# ours goes in the metadata as well).
CREDIT_NOTE_REASONS = {
    "duplicate_usage": "duplicate",
    "metering_error": "order_change",
    "pricing_error": "order_change",
    "reconciliation": "order_change",
    "outage_sla": "product_unsatisfactory",
    "goodwill": "product_unsatisfactory",
    "other": "order_change",
}


class CreditRoute(enum.StrEnum):
    SIMULATED_CREDIT = "simulated_credit"
    BALANCE_TRANSACTION = "balance_transaction"  # open period: the next invoice is lowered
    CREDIT_NOTE = "credit_note"  # a finalized invoice is credited
    BALANCE_INCREMENT = "balance_increment"  # Orb: the balance applies to the next invoice
    WALLET_GRANT = "wallet_grant"  # Lago: granted (free) wallet credits, on the next invoice
    CREDIT_GRANT = "credit_grant"  # Metronome: a credit grant, drawn down by the next invoice


@dataclass(frozen=True)
class CreditRequest:
    """A credit in the customer's favour. `invoice_id` set: against that finalized invoice
    (a credit note); empty: on the upcoming invoice (a customer balance transaction).

    `idempotency_key` is derived from our adjustment, so a retry or a rerun after a crash
    sends the very same request and the provider replays its first answer."""

    reference: str
    idempotency_key: str
    customer_id: str
    currency: str
    amount_minor: int
    reason_code: str
    description: str
    invoice_id: str = ""
    metadata: dict = field(default_factory=dict)

    def provider_metadata(self) -> dict:
        return {
            **self.metadata,
            "meterops_adjustment": self.reference,
            "meterops_reason": self.reason_code,
        }


@dataclass(frozen=True)
class CreditResult:
    credit_id: str
    route: CreditRoute
    response: dict = field(default_factory=dict)


class PlatformReads:
    """The generalised reads, mixed into every adapter (BillingProvider
    inherits them). Defaults answer "the platform has none"; an adapter overrides what its
    platform offers. Read-back of recorded usage stays `list_meter_event_summaries`, at the
    window the adapter's `rules.read_window` declares."""

    # Stripe's rules by default (the simulated provider mirrors Stripe); adapters override.
    rules: PlatformRules = STRIPE_RULES
    # Whether usage names the customer by our account's external id (Orb, Lago, Metronome's
    # ingest aliases, Amberflo): then the customer needs no stored id on our side.
    customer_by_external_id: bool = False

    # A secondary platform, read side by side during a migration: never pushed to, and
    # nothing is created there.
    read_only: bool = False

    def find_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo | None:
        """The platform's meter for `spec.event_name` if it exists (never creates one)."""
        return None

    def lookup_customer(self, *, external_id: str, existing_id: str = "") -> str:
        """The account's customer id at the platform without creating one ("" if none)."""
        if self.customer_by_external_id:
            return external_id
        return existing_id

    def upcoming_invoice(self, *, customer_id: str) -> InvoiceData | None:
        """The platform's own preview of the customer's next invoice, or None where the
        platform has no preview (or the customer nothing upcoming)."""
        return None


class BillingProvider(PlatformReads, abc.ABC):
    """One billing platform. Every method may raise ProviderUnavailable (try later) or
    ProviderMisconfigured (fix the settings)."""

    name: str
    # Set when the provider asked us to stop for now (e.g. a Retry-After past our cap): the
    # push run ends and leaves what is pending for the next run.
    halted: str = ""
    # Whether the customer id belongs on Account.provider_customer_id (a real provider's id)
    # or is derived each time (the simulated provider's).
    stores_customer_on_account: bool = False
    # Whether `list_meter_event_summaries` answers bounds that are not UTC midnights (a period
    # cut in Asia/Kolkata) with the usage inside exactly those bounds. Without it, such a
    # period can only be read over its UTC cover days.
    exact_summary_bounds: bool = False

    @abc.abstractmethod
    def ensure_customer(self, *, external_id: str, name: str, existing_id: str = "") -> str:
        """The provider's customer id for our account, creating the customer if needed."""

    @abc.abstractmethod
    def ensure_meter(self, *, spec: MeterSpec) -> ProviderMeterInfo:
        """The provider meter for `spec.event_name`, creating it if needed."""

    @abc.abstractmethod
    def report_usage(self, items: Sequence[UsageItem]) -> list[ItemResult]:
        """Send usage; one result per item, in order. Retries transient failures itself and
        answers RETRY for what still failed (the caller sends those again later, unchanged)."""

    @abc.abstractmethod
    def list_meter_event_summaries(
        self, *, provider_meter_id: str, customer_id: str, start: datetime, end: datetime
    ) -> Iterator[MeterSummary]:
        """Daily (UTC) summaries over [start, end), both UTC midnights, every page. An adapter
        with `exact_summary_bounds` also takes other (minute-aligned) bounds and answers the
        usage inside exactly them (in one summary or several that add up)."""

    @abc.abstractmethod
    def list_invoices(
        self, *, customer_id: str, created_since: datetime | None = None
    ) -> Iterator[InvoiceData]:
        """The customer's invoices with their lines, every page."""

    def create_credit(self, credit: CreditRequest) -> CreditResult:
        """Credit the customer once per idempotency key: the same request again answers the
        first credit. Raises ProviderUnavailable (retry later) or ProviderError (refused).

        An adapter without credits refuses every credit: the adjustment is then `failed`
        with this message, and nothing reaches the platform."""
        raise ProviderError(
            f"Credits are not built for {self.name} yet: apply this credit in {self.name} itself."
        )


def significant_digits(value: Decimal) -> int:
    """Digits from the first non-zero one to the last non-zero one: 1000 and 0.001 have one,
    1234.5 has five. Zero has none."""
    return len("".join(str(d) for d in value.as_tuple().digits).strip("0"))


def split_value(value: Decimal, max_digits: int = MAX_VALUE_DIGITS) -> list[Decimal]:
    """`value` as parts of at most `max_digits` significant digits each that add up to it
    exactly (one part when it already fits). For sum meters only."""
    parts: list[Decimal] = []
    rest = value
    while significant_digits(rest) > max_digits:
        # Keep the leading max_digits digits (toward zero); the rest has fewer digits.
        sign, digits, exponent = rest.as_tuple()
        cut = len(digits) - max_digits
        head = Decimal((sign, digits[:max_digits], exponent + cut))
        parts.append(head)
        with localcontext() as context:
            context.prec = len(digits) + 2  # exact: the default 28 digits would round
            rest = rest - head
    if rest or not parts:
        parts.append(rest)
    return parts


def next_idempotency_key(key: str) -> str:
    """The key after `key` for the same item: `k` -> `k~2` -> `k~3` ... (within 255)."""
    base, sep, n = key.rpartition("~")
    if sep and n.isdigit():
        return f"{base}~{int(n) + 1}"
    return f"{key[:250]}~2"


def utc_day_start(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, at.day, tzinfo=UTC)
