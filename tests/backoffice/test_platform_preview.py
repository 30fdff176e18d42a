"""The account page's "Platform preview" tab: our projection so far next to the billing
platform's own preview of the upcoming invoice (Stripe's create_preview, Orb's upcoming
invoice), through the platforms' fake servers and their official SDKs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.periods import local_date
from billing.platform_preview import PreviewStatus, platform_preview_comparison
from billing.services.plans import plan_create, price_add
from billing.services.push import usage_push
from billing.services.subscriptions import subscription_create
from metering.models import Meter
from tests.billing.test_push import hours_ago, make_event
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

# Our price: $0.125 a call. Seven calls so far: $0.875, $0.88 on the invoice (half up, once).
OUR_UNIT_PRICE = "0.125"
CALLS = 7


@pytest.fixture
def account():
    """An account on a per-call plan since three days ago, with seven calls pushed to the
    configured platform (the fixture of the platform's fake comes first)."""
    now = timezone.now()
    account = AccountFactory(external_id="preview-acme", name="Acme", timezone="UTC")
    meter = MeterFactory(code="calls", name="Calls", aggregation=Meter.Aggregation.COUNT)
    plan = plan_create(code="calls", name="Calls plan", currency="USD")
    price_add(
        plan=plan,
        meter=meter,
        model="per_unit",
        unit_price=OUR_UNIT_PRICE,
        provider_price_id="price_calls",
    )
    subscription_create(
        account=account,
        plan=plan,
        started_at=local_date(now, "UTC") - dt.timedelta(days=3),
        now=now,
    )
    for n in range(CALLS):
        make_event(account, meter, Decimal(1), hours_ago(n + 1), drain=False)
    make_event(account, meter, Decimal(1), hours_ago(0.5))
    result = usage_push()
    assert result.acknowledged == CALLS + 1 and not result.failed
    account.refresh_from_db()
    return account


def _period(account) -> tuple[int, int]:
    period = account.subscriptions.get().periods.get(state="open")
    return int(period.starts_at.timestamp()), int(period.ends_at.timestamp())


def stripe_prices(fake, account, cents_per_call: str) -> None:
    start, end = _period(account)
    fake.add_subscription(
        customer=account.provider_customer_id,
        items=[
            {
                "price": "price_calls",
                "event_name": "mo_calls",
                "unit_amount_decimal": cents_per_call,
            }
        ],
        period_start=start,
        period_end=end,
    )


def orb_prices(fake, account, dollars_per_call: str) -> None:
    metric = fake.metric_by_event("mo_calls")
    fake.subscribe(account.external_id, unit_prices={metric["id"]: Decimal(dollars_per_call)})


PLATFORMS = {
    # name: (fixture, sets the platform's price, our price there, a drifted price, label)
    "stripe": ("fake", stripe_prices, "12.5", "25", "Stripe"),
    "orb": ("orb_fake", orb_prices, "0.125", "0.25", "Orb"),
}


@pytest.fixture(params=sorted(PLATFORMS))
def platform(request):
    fixture, prices, same, drifted, label = PLATFORMS[request.param]
    server = request.getfixturevalue(fixture)
    return request.param, server, prices, same, drifted, label


def _staff(role: str | None = None) -> Client:
    user = get_user_model().objects.create_user(
        f"preview-{role or 'none'}", password="x-irrelevant-9", is_staff=True
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


def _fragment(client: Client, account, **query):
    url = reverse("admin:metering_account_hub_section", args=[account.pk, "preview"])
    return client.get(url, query)


def test_the_same_prices_match_to_the_cent(platform, account):
    name, server, prices, same, _drifted, label = platform
    prices(server, account, same)

    response = _fragment(_staff("Support"), account)

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-status="match"' in html
    assert f"{label}&#x27;s preview matches our projection so far: $1.00." in html
    comparison = platform_preview_comparison(account)
    assert (comparison.ours_minor, comparison.theirs_minor) == (100, 100)
    assert comparison.difference_minor == 0 and comparison.platform == name
    [line] = comparison.lines
    assert (line.meter_code, line.ours_quantity, line.theirs_quantity) == ("calls", 8, 8)


def test_a_drifted_price_is_shown_with_the_difference_and_the_line_that_differs(platform, account):
    _name, server, prices, _same, drifted, label = platform
    prices(server, account, drifted)

    response = _fragment(_staff("Manager"), account)

    html = response.content.decode()
    assert response.status_code == 200 and 'data-status="differs"' in html
    # 8 calls: $1.00 here, $2.00 there.
    assert (
        f"{label}&#x27;s preview is $1.00 more than our projection so far: Calls is priced "
        "$0.25/unit there vs $0.125 here."
    ) in html
    assert 'id="preview-difference">+$1.00 (+100%)<' in html
    assert 'id="preview-ours">$1.00<' in html and 'id="preview-theirs">$2.00<' in html
    assert "UTC" in html
    comparison = platform_preview_comparison(account)
    assert comparison.status is PreviewStatus.DIFFERS
    assert comparison.difference_minor == 100 and comparison.difference_percent == Decimal("100.0")


def test_usage_the_platform_does_not_hold_yet_is_named_as_such(fake, account):
    stripe_prices(fake, account, "12.5")
    # One more call here that was never pushed.
    meter = Meter.objects.get(code="calls")
    make_event(account, meter, Decimal(1), hours_ago(0.2))

    comparison = platform_preview_comparison(account)

    # 9 x $0.125 = $1.125, $1.13 here; $1.00 there.
    assert comparison.status is PreviewStatus.DIFFERS and comparison.difference_minor == -13
    assert comparison.sentence.startswith(
        "Stripe's preview is $0.13 less than our projection so far: Stripe holds 8 units of "
        "Calls, we have 9 units (usage not pushed yet"
    )


def test_the_answer_is_kept_five_minutes_and_read_again_on_request(fake, account):
    stripe_prices(fake, account, "12.5")
    client = _staff("Support")

    first = _fragment(client, account)
    second = _fragment(client, account)
    fresh = _fragment(client, account, fresh="1")

    assert len(fake.calls("/v1/invoices/create_preview")) == 2
    assert "kept for up to 5 minutes" not in first.content.decode()
    assert "kept for up to 5 minutes" in second.content.decode()
    assert "kept for up to 5 minutes" not in fresh.content.decode()


def test_a_platform_that_fails_is_unavailable_not_a_server_error(fake, account):
    stripe_prices(fake, account, "12.5")
    fake.fail_next(10, status=500)

    response = _fragment(_staff("Support"), account)

    html = response.content.decode()
    assert response.status_code == 200 and 'data-status="unavailable"' in html
    assert "Stripe is unavailable, its preview could not be read (Stripe: " in html
    assert "Our projection so far: $1.00" in html
    assert len(fake.calls("/v1/subscriptions")) == 2  # one request, one retry, no more


def test_a_platform_slower_than_the_page_waits_is_unavailable(fake, account, monkeypatch):
    import time

    from billing import platform_preview

    stripe_prices(fake, account, "12.5")
    monkeypatch.setattr(platform_preview, "PAGE_TIMEOUT_SECONDS", 0.3)
    fake.slow_seconds = 5.0

    started = time.monotonic()
    comparison = platform_preview_comparison(account)
    waited = time.monotonic() - started

    assert comparison.status is PreviewStatus.UNAVAILABLE
    # One request and one retry of 0.3 s each and the backoff between them (about 1.1 s, and
    # our projection on a busy machine), never a whole answer of 5 s.
    assert waited < 5


def test_a_customer_without_a_subscription_there_has_no_preview(fake, account):
    response = _fragment(_staff("Support"), account)

    html = response.content.decode()
    assert 'data-status="no_preview"' in html
    assert f"Stripe has no upcoming invoice for {account.provider_customer_id}" in html


def test_the_account_page_offers_the_tab_without_calling_the_platform(fake, account):
    stripe_prices(fake, account, "12.5")

    page = _staff("Auditor").get(reverse("admin:metering_account_change", args=[account.pk]))

    assert page.status_code == 200
    assert 'id="tab-preview"' in page.content.decode()
    assert fake.calls("/v1/invoices/create_preview") == []
    assert fake.calls("/v1/subscriptions") == []


def test_the_simulated_provider_has_no_preview_and_no_tab(settings):
    settings.BILLING_PROVIDER = "simulated"
    account = AccountFactory()
    client = _staff("Support")

    page = client.get(reverse("admin:metering_account_change", args=[account.pk]))

    assert page.status_code == 200 and 'id="tab-preview"' not in page.content.decode()
    assert 'id="tab-events"' in page.content.decode()
    assert platform_preview_comparison(account) is None
    assert 'data-status="none"' in _fragment(client, account).content.decode()


@pytest.mark.parametrize("role", ["Support", "Manager", "Auditor"])
def test_every_role_that_views_accounts_sees_the_tab(fake, account, role):
    stripe_prices(fake, account, "12.5")
    assert _fragment(_staff(role), account).status_code == 200


def test_staff_without_a_role_are_refused(fake, account):
    assert _fragment(_staff(), account).status_code == 403
    assert fake.calls("/v1/invoices/create_preview") == []


def test_the_plan_fee_pairs_with_the_platforms_fixed_price_and_lines_on_no_meter_stay_apart(
    fake, account
):
    from billing.models import Plan

    Plan.objects.filter(code="calls").update(flat_fee_minor=49_00)
    start, end = _period(account)
    fake.add_subscription(
        customer=account.provider_customer_id,
        items=[
            {"price": "price_calls", "event_name": "mo_calls", "unit_amount_decimal": "12.5"},
            {"price": "price_base", "unit_amount": 49_00},
            {"price": "price_support", "unit_amount": 10_00},
        ],
        period_start=start,
        period_end=end,
    )

    comparison = platform_preview_comparison(account)

    by_key = {line.key: line for line in comparison.lines}
    assert (by_key["plan_fee"].ours_minor, by_key["plan_fee"].theirs_minor) == (49_00, 49_00)
    assert (by_key["meter:calls"].ours_minor, by_key["meter:calls"].theirs_minor) == (100, 100)
    [extra] = [line for key, line in by_key.items() if key.startswith("platform:")]
    assert (extra.ours_minor, extra.theirs_minor, extra.title) == (None, 10_00, "price_support")
    assert comparison.difference_minor == 10_00
    assert comparison.sentence == (
        "Stripe's preview is $10.00 more than our projection so far: price_support is billed "
        "only there ($10.00)."
    )
