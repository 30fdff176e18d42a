"""Stripe's upcoming-invoice preview (`POST /v1/invoices/create_preview`) through the real
`stripe` SDK against the fake Stripe server: priced from what the meters hold, lines naming our
meters, None where Stripe has nothing upcoming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe

from billing.models import ProviderMeter
from billing.providers import get_provider
from billing.providers import stripe as stripe_adapter
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.test_push import hours_ago, make_event
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def pushed(fake):
    """An account with 7 calls and 2.5 GB at the fake (pushed through the ledger)."""
    account = AccountFactory(external_id="preview-acme", name="Acme")
    calls = MeterFactory(code="calls", aggregation=Meter.Aggregation.COUNT)
    storage = MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")
    for n in range(7):
        make_event(account, calls, Decimal(1), hours_ago(n + 1), drain=False)
    make_event(account, storage, Decimal("2.5"), hours_ago(2))
    result = usage_push()
    assert result.acknowledged == 8 and not result.failed
    account.refresh_from_db()
    return account


def _period() -> tuple[int, int]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    return int(start.timestamp()), int((start + timedelta(days=30)).timestamp())


def test_the_preview_prices_the_current_period_from_the_meters_and_names_our_meters(fake, pushed):
    start, end = _period()
    fake.add_subscription(
        customer=pushed.provider_customer_id,
        items=[
            {"price": "price_calls", "event_name": "mo_calls", "unit_amount_decimal": "12.5"},
            {"price": "price_storage", "event_name": "mo_storage", "unit_amount_decimal": "40"},
            {"price": "price_base", "unit_amount": 4900},
        ],
        period_start=start,
        period_end=end,
    )

    preview = get_provider().upcoming_invoice(customer_id=pushed.provider_customer_id)

    # 7 x 12.5 cents = 87.5 -> 88 (half up, once per line); 2.5 GB x 40 cents = 100; 4,900.
    assert [(li.meter_code, li.quantity, li.amount_minor) for li in preview.lines] == [
        ("calls", Decimal(7), 88),
        ("storage", Decimal("2.5"), 100),
        ("", Decimal(1), 4900),
    ]
    assert preview.total_minor == 5088 and preview.currency == "USD"
    assert preview.status == "draft" and preview.invoice_id.startswith("upcoming_in_")
    assert preview.period_start == datetime.fromtimestamp(start, tz=UTC)
    assert preview.lines[0].price_id == "price_calls"
    [call] = fake.calls("/v1/invoices/create_preview", method="POST")
    assert call["content_type"].startswith("application/x-www-form-urlencoded")
    assert b"subscription=sub_" in call["body"] and b"customer=cus_" in call["body"]
    assert fake.stripe_versions == {stripe_adapter.STRIPE_API_VERSION}
    assert ProviderMeter.objects.filter(provider="stripe").count() == 2


def test_no_subscription_or_none_that_will_invoice_previews_nothing(fake, pushed):
    adapter = get_provider()
    customer = pushed.provider_customer_id
    assert adapter.upcoming_invoice(customer_id=customer) is None
    assert adapter.upcoming_invoice(customer_id="") is None
    assert adapter.upcoming_invoice(customer_id="cus_nobody") is None

    start, end = _period()
    paused = fake.add_subscription(
        customer=customer,
        items=[{"price": "price_calls", "event_name": "mo_calls", "unit_amount_decimal": "1"}],
        period_start=start,
        period_end=end,
        status="paused",
    )
    # Listed, but Stripe answers invoice_upcoming_none for it: None, not an error.
    assert adapter.upcoming_invoice(customer_id=customer) is None
    assert [c["status"] for c in fake.calls("/v1/invoices/create_preview")] == [400]

    fake.subscriptions[paused["id"]]["status"] = "canceled"
    fake.add_subscription(
        customer=customer,
        items=[{"price": "price_calls", "event_name": "mo_calls", "unit_amount_decimal": "3"}],
        period_start=start,
        period_end=end,
    )
    assert adapter.upcoming_invoice(customer_id=customer).total_minor == 21


def test_the_fake_refuses_a_customer_wide_preview_as_the_pinned_version_does(fake, pushed):
    client = stripe.StripeClient(
        fake.api_key,
        stripe_version=stripe_adapter.STRIPE_API_VERSION,
        base_addresses={"api": fake.url},
        max_network_retries=0,
    )
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create_preview({"customer": pushed.provider_customer_id})
    assert refused.value.http_status == 400


def test_a_platform_that_keeps_failing_is_unavailable_not_an_answer(fake, pushed):
    from billing.providers.base import ProviderUnavailable

    adapter = get_provider("stripe", max_retries=1, sleep=lambda _s: None)
    fake.fail_next(5, status=500)
    with pytest.raises(ProviderUnavailable):
        adapter.upcoming_invoice(customer_id=pushed.provider_customer_id)
