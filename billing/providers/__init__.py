"""Billing-provider adapters: one interface (base.BillingProvider), two implementations.

`get_provider()` picks the one named by settings.BILLING_PROVIDER: `simulated` (the default,
kept in the database) or `stripe` (the stripe SDK, STRIPE_API_KEY, STRIPE_API_BASE).
"""

from __future__ import annotations

from django.conf import settings

from billing.providers.base import BillingProvider


def get_provider(name: str | None = None, **options) -> BillingProvider:
    name = name or settings.BILLING_PROVIDER
    if name == "simulated":
        from billing.providers.simulated import SimulatedProvider

        return SimulatedProvider(**options)
    if name == "stripe":
        from billing.providers.stripe import StripeProvider

        options.setdefault("retry_after_cap", settings.STRIPE_RETRY_AFTER_MAX)
        options.setdefault("key_prefix", _installation_id)
        return StripeProvider(
            api_key=settings.STRIPE_API_KEY, api_base=settings.STRIPE_API_BASE, **options
        )
    raise ValueError(f"Unknown billing provider {name!r} (simulated or stripe).")


def _installation_id() -> str:
    from billing.services.installation import installation_id

    return installation_id()
