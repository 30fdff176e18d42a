"""Billing-provider adapters: one interface (base.BillingProvider), five implementations.

`get_provider()` picks the one named by settings.BILLING_PROVIDER: `simulated` (the default,
kept in the database), `stripe` (the stripe SDK, STRIPE_API_KEY, STRIPE_API_BASE) or `orb`
(the orb-billing SDK, ORB_API_KEY, ORB_API_BASE) or `lago` (the lago-python-client SDK,
LAGO_API_KEY, LAGO_API_URL) or `metronome` (metronome-sdk, METRONOME_API_KEY, METRONOME_API_BASE)
or `amberflo` (Amberflo's REST API with httpx, AMBERFLO_API_KEY, AMBERFLO_BASE_URL).
`platform_rules(name)` answers a platform's PlatformRules without building an adapter (the
push ledger reads them).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from django.conf import settings

from billing.providers.base import STRIPE_RULES, BillingProvider, PlatformRules


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
    if name == "orb":
        from billing.providers.orb import OrbProvider

        options.setdefault("retry_after_cap", settings.ORB_RETRY_AFTER_MAX)
        options.setdefault("grace_period", timedelta(hours=settings.ORB_GRACE_PERIOD_HOURS))
        return OrbProvider(api_key=settings.ORB_API_KEY, api_base=settings.ORB_API_BASE, **options)
    if name == "lago":
        from billing.providers.lago import LagoProvider

        options.setdefault("retry_after_cap", settings.LAGO_RETRY_AFTER_MAX)
        return LagoProvider(api_key=settings.LAGO_API_KEY, api_url=settings.LAGO_API_URL, **options)
    if name == "metronome":
        from billing.providers.metronome import MetronomeProvider

        options.setdefault("retry_after_cap", settings.METRONOME_RETRY_AFTER_MAX)
        return MetronomeProvider(
            api_key=settings.METRONOME_API_KEY, api_base=settings.METRONOME_API_BASE, **options
        )
    if name == "amberflo":
        from billing.providers.amberflo import AmberfloProvider

        options.setdefault("retry_after_cap", settings.AMBERFLO_RETRY_AFTER_MAX)
        return AmberfloProvider(
            api_key=settings.AMBERFLO_API_KEY, base_url=settings.AMBERFLO_BASE_URL, **options
        )
    raise ValueError(
        f"Unknown billing provider {name!r} (simulated, stripe, orb, lago, metronome or amberflo)."
    )


def get_secondary_provider() -> BillingProvider | None:
    """The read-only second platform (BILLING_PROVIDER_SECONDARY), or None."""
    name = getattr(settings, "BILLING_PROVIDER_SECONDARY", "")
    if not name:
        return None
    provider = get_provider(name)
    provider.read_only = True
    return provider


def platform_rules(name: str) -> PlatformRules:
    """The rules of the platform `name` as configured here (simulated mirrors Stripe)."""
    if name == "orb":
        from billing.providers.orb import ORB_RULES

        return replace(ORB_RULES, past_window=timedelta(hours=settings.ORB_GRACE_PERIOD_HOURS))
    if name == "lago":
        from billing.providers.lago import LAGO_RULES

        return LAGO_RULES
    if name == "metronome":
        from billing.providers.metronome import METRONOME_RULES

        return METRONOME_RULES
    if name == "amberflo":
        from billing.providers.amberflo import AMBERFLO_RULES

        return AMBERFLO_RULES
    return STRIPE_RULES


def _installation_id() -> str:
    from billing.services.installation import installation_id

    return installation_id()
