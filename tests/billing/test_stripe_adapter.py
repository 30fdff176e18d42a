"""The Stripe adapter, driving the real `stripe` SDK against the fake Stripe server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe

from billing.models import ProviderInvoice, ProviderMeter, ProviderUsageSummary
from billing.providers import get_provider
from billing.providers import stripe as stripe_adapter
from billing.providers.base import ItemStatus, MeterSpec, ProviderMisconfigured, UsageItem
from billing.services.pull import provider_pull
from billing.services.push import usage_push
from tests.metering.factories import AccountFactory, MeterFactory


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def adapter(fake, sleeps):
    return get_provider("stripe", sleep=sleeps, key_prefix="t")


@pytest.fixture
def ready(fake, adapter):
    """A customer and a sum meter at the fake; returns (customer id, event name)."""
    customer = adapter.ensure_customer(external_id="acme", name="Acme")
    adapter.ensure_meter(
        spec=MeterSpec(
            meter_code="calls", display_name="Calls", event_name="mo_calls", aggregation="sum"
        )
    )
    return customer, "mo_calls"


def item(customer: str, identifier: str, value: str = "1", *, age: timedelta = timedelta(hours=1)):
    return UsageItem(
        identifier=identifier,
        idempotency_key=identifier,
        event_name="mo_calls",
        customer_id=customer,
        value=Decimal(value),
        timestamp=(datetime.now(UTC) - age).replace(microsecond=0),
    )


def test_v1_meter_event_is_form_encoded_and_carries_the_pinned_api_version(fake, adapter, ready):
    customer, event_name = ready

    [result] = adapter.report_usage([item(customer, "mo-e1", "2.5")])

    assert result.status is ItemStatus.RECORDED
    [call] = fake.calls("/v1/billing/meter_events")
    assert call["content_type"].startswith("application/x-www-form-urlencoded")
    assert call["idempotency_key"] == "mo-e1"
    assert fake.stripe_versions == {stripe_adapter.STRIPE_API_VERSION}
    assert fake.total(event_name=event_name, customer=customer) == Decimal("2.5")


def test_the_fake_refuses_a_json_body_on_v1(fake, ready):
    customer, _ = ready
    request = urllib.request.Request(  # noqa: S310 - the local fake
        f"{fake.url}/v1/billing/meter_events",
        data=json.dumps({"event_name": "mo_calls", "payload": {"value": "1"}}).encode(),
        headers={"Authorization": f"Bearer {fake.api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - the local fake
    assert info.value.code == 400
    assert fake.total(event_name="mo_calls", customer=customer) == 0


def test_a_retry_with_the_same_identifier_and_key_is_counted_once(fake, adapter, ready):
    customer, event_name = ready
    usage = item(customer, "mo-e7", "3")

    first = adapter.report_usage([usage])
    again = adapter.report_usage([usage])

    assert [r.status for r in first + again] == [ItemStatus.RECORDED, ItemStatus.RECORDED]
    assert again[0].response["idempotent_replay"] is True
    assert fake.count_identifier("mo-e7") == 1
    assert fake.total(event_name=event_name, customer=customer) == Decimal(3)


def test_the_same_identifier_under_another_key_is_a_duplicate_not_a_second_count(
    fake, adapter, ready
):
    customer, event_name = ready
    adapter.report_usage([item(customer, "mo-e8")])
    other_key = UsageItem(**{**item(customer, "mo-e8").__dict__, "idempotency_key": "other"})

    [result] = adapter.report_usage([other_key])

    assert result.status is ItemStatus.DUPLICATE
    assert result.code == "identifier_already_exists"
    assert fake.total(event_name=event_name, customer=customer) == Decimal(1)


def test_v1_answers_a_repeated_identifier_with_a_codeless_400_which_counts_as_duplicate(
    fake, adapter, ready
):
    customer, event_name = ready
    adapter.report_usage([item(customer, "mo-t-e20", "5")])
    assert len(fake.calls("/v1/billing/meter_events")) == 1
    again = UsageItem(**{**item(customer, "mo-t-e20", "5").__dict__, "idempotency_key": "k2"})

    [result] = adapter.report_usage([again])

    answer = fake.calls("/v1/billing/meter_events")[-1]
    assert answer["status"] == 400
    assert result.status is ItemStatus.DUPLICATE  # Stripe counted it: not `rejected`
    assert "already exists with identifier" in result.message
    assert fake.total(event_name=event_name, customer=customer) == Decimal(5)


def test_429_answers_are_retried_honouring_retry_after_with_the_same_key(
    fake, adapter, ready, sleeps
):
    customer, event_name = ready
    fake.retry_after = "2"
    fake.fail_next(2)

    [result] = adapter.report_usage([item(customer, "mo-e9", "4")])

    assert result.status is ItemStatus.RECORDED
    assert sleeps == [2.0, 2.0]
    calls = fake.calls("/v1/billing/meter_events")
    assert [c["status"] for c in calls] == [429, 429, 200]
    assert {c["idempotency_key"] for c in calls} == {"mo-e9"}
    assert len({c["body"] for c in calls}) == 1
    assert fake.total(event_name=event_name, customer=customer) == Decimal(4)


def test_429_without_retry_after_backs_off_exponentially(fake, adapter, ready, sleeps):
    customer, _ = ready
    fake.retry_after = None
    fake.fail_next(3)

    [result] = adapter.report_usage([item(customer, "mo-e10")])

    assert result.status is ItemStatus.RECORDED
    assert sleeps == [0.5, 1.0, 2.0]


def test_rate_limited_past_the_retries_the_item_is_left_to_retry_later(fake, sleeps, ready):
    customer, event_name = ready
    adapter = get_provider("stripe", sleep=sleeps, max_retries=2, key_prefix="t")
    fake.fail_next(5)

    [result] = adapter.report_usage([item(customer, "mo-e11")])

    assert result.status is ItemStatus.RETRY
    assert len(sleeps) == 2
    assert fake.total(event_name=event_name, customer=customer) == 0


def test_a_timestamp_older_than_35_days_is_answered_too_old(fake, adapter, ready):
    customer, event_name = ready

    [result] = adapter.report_usage([item(customer, "mo-e12", age=timedelta(days=36))])

    assert result.status is ItemStatus.TOO_OLD
    assert result.code == "timestamp_too_far_in_past"
    assert fake.total(event_name=event_name, customer=customer) == 0


def test_large_batches_go_through_the_v2_stream_100_events_per_request(fake, adapter, ready):
    customer, event_name = ready
    items = [item(customer, f"mo-e{n}") for n in range(1000, 1250)]

    results = adapter.report_usage(items)

    assert {r.status for r in results} == {ItemStatus.ACCEPTED}
    streams = fake.calls("/v2/billing/meter_event_stream")
    sizes = [len(json.loads(c["body"])["events"]) for c in streams]
    assert sizes == [100, 100, 50]
    assert all(c["content_type"].startswith("application/json") for c in streams)
    assert len(fake.calls("/v2/billing/meter_event_session")) == 1
    assert fake.calls("/v1/billing/meter_events") == []
    assert fake.total(event_name=event_name, customer=customer) == Decimal(250)


def test_the_fake_refuses_more_than_100_events_in_one_stream_request(fake, adapter, ready):
    customer, _ = ready
    events = [
        {
            "event_name": "mo_calls",
            "identifier": f"x{n}",
            "payload": {"stripe_customer_id": customer, "value": "1"},
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        for n in range(101)
    ]
    with pytest.raises(Exception) as info:
        adapter.client.v2.billing.meter_event_stream.create(
            {"events": events}, {"api_key": adapter._session()}
        )
    assert info.value.http_status == 400
    assert info.value.code == "too_many_events"


def test_an_item_the_stream_would_drop_goes_through_v1_for_a_synchronous_answer(
    fake, adapter, ready
):
    """The v2 stream validates asynchronously: a too-old event or a value of more than 15
    significant digits would be a 200 and then dropped; such items go through v1."""
    customer, event_name = ready
    items = [item(customer, f"mo-e{n}") for n in range(2000, 2018)]
    items.append(item(customer, "mo-e2018", age=timedelta(days=40)))
    items.append(item(customer, "mo-e2019", "1.0000000000000001"))

    results = adapter.report_usage(items)

    assert [r.status for r in results[:-2]] == [ItemStatus.ACCEPTED] * 18
    assert results[-2].status is ItemStatus.TOO_OLD
    assert results[-1].status is ItemStatus.REJECTED
    assert results[-1].code == "meter_event_value_too_many_digits"
    assert [c["status"] for c in fake.calls("/v2/billing/meter_event_stream")] == [200]
    assert len(fake.calls("/v1/billing/meter_events")) == 2
    assert fake.error_reports == []
    assert fake.total(event_name=event_name, customer=customer) == Decimal(18)


def test_the_fake_stream_drops_invalid_events_and_reports_them_later(fake, adapter, ready):
    customer, event_name = ready
    events = [
        {
            "event_name": "mo_calls",
            "identifier": identifier,
            "payload": {"stripe_customer_id": customer, "value": value},
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        for identifier, value in (("ok", "2"), ("long", "1234567890.1234567"))
    ]

    adapter.client.v2.billing.meter_event_stream.create(
        {"events": events}, {"api_key": adapter._session()}
    )

    assert fake.total(event_name=event_name, customer=customer) == Decimal(2)
    assert [r[:2] for r in fake.error_reports] == [("long", "meter_event_value_too_many_digits")]


def test_a_saved_500_is_not_retried_with_its_key_and_the_next_attempt_uses_a_new_key(
    fake, adapter, ready, sleeps
):
    customer, event_name = ready
    fake.server_error_next(1)
    usage = item(customer, "mo-t-e30", "7")

    [first] = adapter.report_usage([usage])

    assert first.status is ItemStatus.RETRY
    assert first.next_idempotency_key == "mo-t-e30~2"
    calls = fake.calls("/v1/billing/meter_events")
    assert [c["status"] for c in calls] == [500]  # Stripe-Should-Retry: false honoured
    assert sleeps == []

    [same_key] = adapter.report_usage([usage])
    assert same_key.status is ItemStatus.RETRY  # the saved 500, replayed once, not looped
    assert len(fake.calls("/v1/billing/meter_events")) == 2

    retried = UsageItem(**{**usage.__dict__, "idempotency_key": first.next_idempotency_key})
    [second] = adapter.report_usage([retried])

    assert second.status is ItemStatus.RECORDED
    assert fake.total(event_name=event_name, customer=customer) == Decimal(7)


def test_a_key_still_in_flight_409_is_left_for_the_next_run(fake, adapter, ready, sleeps):
    customer, _ = ready
    fake.in_flight_keys.add("mo-t-e40")

    [result] = adapter.report_usage([item(customer, "mo-t-e40")])

    assert result.status is ItemStatus.RETRY
    assert result.code == "idempotency_key_in_flight"
    assert [c["status"] for c in fake.calls("/v1/billing/meter_events")] == [409]
    assert sleeps == []


def test_a_409_on_the_v2_stream_is_left_for_the_next_run(fake, adapter, ready):
    customer, _ = ready
    items = [item(customer, f"mo-t-e{n}") for n in range(4000, 4020)]
    digest = (
        __import__("hashlib")
        .sha256("\n".join(i.idempotency_key for i in items).encode())
        .hexdigest()
    )
    fake.in_flight_keys.add(f"mo-batch-{digest[:48]}")

    results = adapter.report_usage(items)

    assert {r.status for r in results} == {ItemStatus.RETRY}
    assert [c["status"] for c in fake.calls("/v2/billing/meter_event_stream")] == [409]


def test_a_retry_after_beyond_the_cap_stops_the_adapter_for_this_run(fake, ready, sleeps):
    customer, event_name = ready
    adapter = get_provider("stripe", sleep=sleeps, key_prefix="t", retry_after_cap=30)
    fake.retry_after = "3600"
    fake.fail_next(1)

    results = adapter.report_usage([item(customer, f"mo-t-e5{n}") for n in range(3)])

    assert [r.status for r in results] == [ItemStatus.RETRY] * 3
    assert sleeps == []  # never slept an hour holding the push lock
    assert "Retry-After" in adapter.halted
    assert len(fake.calls("/v1/billing/meter_events")) == 1
    assert fake.total(event_name=event_name, customer=customer) == 0


def test_an_expired_meter_event_session_is_renewed(fake, adapter, ready):
    customer, event_name = ready
    adapter.report_usage([item(customer, f"mo-e{n}") for n in range(3000, 3020)])
    fake.advance(16 * 60)  # the token expires at the fake; the adapter still holds it

    results = adapter.report_usage(
        [item(customer, f"mo-e{n}", age=timedelta(0)) for n in range(3020, 3040)]
    )

    assert {r.status for r in results} == {ItemStatus.ACCEPTED}
    assert len(fake.calls("/v2/billing/meter_event_session")) == 2
    assert [c["status"] for c in fake.calls("/v2/billing/meter_event_stream")] == [200, 401, 200]
    assert fake.total(event_name=event_name, customer=customer) == Decimal(40)


def test_a_session_expired_by_stripe_before_our_clock_says_so_is_renewed(fake, adapter, ready):
    """Stripe's 401 `billing_meter_event_session_expired` (SDK: TemporarySessionExpiredError)
    while our copy of expires_at still looks valid (clock skew, revoked session)."""
    customer, event_name = ready
    adapter.report_usage([item(customer, f"mo-e{n}") for n in range(3100, 3120)])
    fake.sessions.update({token: fake.now() - 1 for token in fake.sessions})

    results = adapter.report_usage([item(customer, f"mo-e{n}") for n in range(3120, 3140)])

    assert {r.status for r in results} == {ItemStatus.ACCEPTED}
    streams = fake.calls("/v2/billing/meter_event_stream")
    assert [c["status"] for c in streams] == [200, 401, 200]
    assert b"billing_meter_event_session_expired" not in streams[-1]["body"]
    assert fake.total(event_name=event_name, customer=customer) == Decimal(40)


def test_summaries_are_exact_per_utc_day_across_pages(fake, adapter, ready, monkeypatch):
    customer, _ = ready
    monkeypatch.setattr(stripe_adapter, "PAGE_SIZE", 2)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=n) for n in range(5, 0, -1)]
    items = []
    for index, day in enumerate(days):
        # 0.1 + 0.2 each day: exact 0.3, not a float's 0.30000000000000004
        items.append(UsageItem(f"a{index}", f"a{index}", "mo_calls", customer, Decimal("0.1"), day))
        late = day + timedelta(hours=23, minutes=59, seconds=59)
        items.append(
            UsageItem(f"b{index}", f"b{index}", "mo_calls", customer, Decimal("0.2"), late)
        )
    adapter.report_usage(items)
    meter = fake.meter_by_event("mo_calls")

    summaries = list(
        adapter.list_meter_event_summaries(
            provider_meter_id=meter["id"], customer_id=customer, start=days[0], end=today
        )
    )

    assert [s.start for s in summaries] == days
    assert {s.value for s in summaries} == {Decimal("0.3")}
    pages = fake.calls(f"/v1/billing/meters/{meter['id']}/event_summaries")
    assert len(pages) == 3


def test_summaries_over_bounds_off_utc_midnights_are_one_summary_of_exactly_those_bounds(
    fake, adapter, ready
):
    # An Asia/Kolkata period: local midnights are 18:30 UTC.
    customer, _ = ready
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=4) + timedelta(hours=18, minutes=30)
    end = start + timedelta(days=3)
    moments = {
        "before": start - timedelta(minutes=1),
        "first": start,
        "last": end - timedelta(seconds=1),
        "after": end,
    }
    adapter.report_usage(
        [UsageItem(k, k, "mo_calls", customer, Decimal("1.25"), at) for k, at in moments.items()]
    )
    meter = fake.meter_by_event("mo_calls")

    summaries = list(
        adapter.list_meter_event_summaries(
            provider_meter_id=meter["id"], customer_id=customer, start=start, end=end
        )
    )

    assert [(s.start, s.end, s.value) for s in summaries] == [(start, end, Decimal("2.5"))]
    assert fake.summary_requests == [
        (meter["id"], customer, int(start.timestamp()), int(end.timestamp()), None)
    ]
    # UTC midnights are still asked per day.
    list(
        adapter.list_meter_event_summaries(
            provider_meter_id=meter["id"], customer_id=customer, start=today, end=today
        )
    )
    assert fake.summary_requests[-1][-1] == "day"


def test_bounds_that_are_not_whole_minutes_are_refused_as_stripe_would(fake, adapter, ready):
    customer, _ = ready
    meter = fake.meter_by_event("mo_calls")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    with pytest.raises(ProviderMisconfigured):
        list(
            adapter.list_meter_event_summaries(
                provider_meter_id=meter["id"],
                customer_id=customer,
                start=today - timedelta(days=1, seconds=30),
                end=today,
            )
        )
    # The fake server enforces Stripe's documented alignment itself.
    summaries = adapter.client.v1.billing.meters.event_summaries
    day, half_hour = int(today.timestamp()), 1800
    refused = [
        {"start_time": day - 86_400 + 30, "end_time": day},  # not a whole minute
        {"start_time": day - half_hour, "end_time": day, "value_grouping_window": "hour"},
        {"start_time": day - 3600, "end_time": day, "value_grouping_window": "day"},
    ]
    for params in refused:
        with pytest.raises(stripe.InvalidRequestError, match="aligned with"):
            summaries.list(meter["id"], {"customer": customer, **params})
    hourly = summaries.list(
        meter["id"],
        {
            "customer": customer,
            "start_time": day - 7200,
            "end_time": day,
            "value_grouping_window": "hour",
        },
    )
    assert hourly.data == []


def test_ensuring_a_meter_twice_makes_one_meter(fake, adapter):
    spec = MeterSpec(meter_code="gb", display_name="GB", event_name="mo_gb", aggregation="last")

    first = adapter.ensure_meter(spec=spec)
    second = adapter.ensure_meter(spec=spec)

    assert first.provider_meter_id == second.provider_meter_id
    assert len(fake.meters) == 1
    assert fake.meters[first.provider_meter_id]["default_aggregation"]["formula"] == "last"


@pytest.mark.django_db
def test_pull_stores_daily_summaries_and_invoices_with_exact_line_quantities(fake):
    fake.embedded_lines = 1
    account = AccountFactory(external_id="pull-acme")
    meter = MeterFactory(code="pull_calls", aggregation="sum", value_property="n")
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    from tests.billing.test_push import make_event

    for n, value in enumerate(["1.25", "2.5", "0.000000000001"]):
        make_event(account, meter, Decimal(value), day + timedelta(hours=n))
    usage_push()
    account.refresh_from_db()
    start, end = int(day.timestamp()), int((day + timedelta(days=1)).timestamp())
    lines = [
        {"price": "price_a", "event_name": "mo_pull_calls", "unit_amount_decimal": "100"},
        {"price": "price_b", "event_name": "mo_pull_calls", "unit_amount_decimal": "1"},
    ]
    fake.create_invoice(
        customer=account.provider_customer_id, lines=lines, period_start=start, period_end=end
    )

    result = provider_pull()

    summary = ProviderUsageSummary.objects.get(account=account, meter=meter)
    assert summary.day == day.date()
    assert summary.value == Decimal("3.750000000001")
    assert summary.provider_meter_id == ProviderMeter.objects.get(meter=meter).provider_meter_id
    invoice = ProviderInvoice.objects.get(account=account)
    assert [line.quantity for line in invoice.lines.order_by("provider_line_id")] == [
        Decimal("3.750000000001"),
        Decimal("3.750000000001"),
    ]
    assert fake.calls("/v1/invoices/")  # the second line came from the lines endpoint
    assert result.invoices == 1 and result.invoice_lines == 2

    again = provider_pull()

    assert again.summaries_stored == 1
    assert ProviderUsageSummary.objects.count() == 1
    assert ProviderInvoice.objects.count() == 1
