"""factory-boy factories for the notifications models."""

from __future__ import annotations

import factory

from notifications.models import WebhookEndpoint
from notifications.signing import webhook_secret_generate


class WebhookEndpointFactory(factory.django.DjangoModelFactory):
    """An enabled endpoint on a loopback URL (tests run with WEBHOOK_ALLOW_PRIVATE on). Tests
    that send for real create endpoints through webhook_endpoint_upsert instead."""

    class Meta:
        model = WebhookEndpoint

    owner_key = factory.Sequence(lambda n: f"account:{n}")
    name = factory.Sequence(lambda n: f"endpoint-{n}")
    url = "http://127.0.0.1:9/hook"
    event_types = factory.LazyFunction(lambda: ["usage.spike"])
    enabled = True
    secret = factory.LazyFunction(webhook_secret_generate)
