"""Billing: plans, their prices, subscriptions and billing periods.

Money is stored as integer minor units with its currency (plan fees, commitments, period
totals) or, for unit prices and tier prices that may be fractions of a cent, as exact decimals
with up to 12 places. The pricing rules themselves live in billing.pricing (pure functions);
Price.to_spec() hands a stored price to them, and Price.clean() validates through them so there
is one set of rules.

One module per concern; every model is importable from billing.models (Django and the rest
of the code import it from here):

- plans: plans, their prices
- subscriptions: subscriptions, billing periods
- projection: projection snapshots
- providers: provider choices, provider meters, provider usage summaries and invoices
- push: push ledger
- webhooks: provider webhook events
- simulated: simulated provider records and faults
"""

from billing.models.plans import DecimalJSONDecoder, Plan, Price
from billing.models.projection import ProjectionSnapshot
from billing.models.providers import (
    Provider,
    ProviderCustomer,
    ProviderInvoice,
    ProviderInvoiceLine,
    ProviderMeter,
    ProviderUsageSummary,
)
from billing.models.push import (
    PushBatch,
    PushInstallation,
    PushLedgerChange,
    PushLedgerEntry,
    PushLedgerEntryQuerySet,
)
from billing.models.simulated import SimulatedCredit, SimulatedFaultConfig, SimulatedUsageRecord
from billing.models.subscriptions import (
    BillingPeriod,
    BillingPeriodQuerySet,
    Subscription,
    SubscriptionQuerySet,
)
from billing.models.webhooks import WebhookEvent

__all__ = [
    "BillingPeriod",
    "BillingPeriodQuerySet",
    "DecimalJSONDecoder",
    "Plan",
    "Price",
    "ProjectionSnapshot",
    "Provider",
    "ProviderCustomer",
    "ProviderInvoice",
    "ProviderInvoiceLine",
    "ProviderMeter",
    "ProviderUsageSummary",
    "PushBatch",
    "PushInstallation",
    "PushLedgerChange",
    "PushLedgerEntry",
    "PushLedgerEntryQuerySet",
    "SimulatedCredit",
    "SimulatedFaultConfig",
    "SimulatedUsageRecord",
    "Subscription",
    "SubscriptionQuerySet",
    "WebhookEvent",
]
