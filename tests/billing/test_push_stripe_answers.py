"""The push against Stripe's harder answers (issue 4, defects 9-14): duplicate identifiers, saved
500s, expired sessions, keys in flight, values past 15 digits, installation prefixes and long
Retry-After waits. The real Stripe adapter and SDK against the fake Stripe server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

import pytest

from billing.models import PushInstallation, PushLedgerEntry
from billing.providers import get_provider
from billing.providers.base import UsageItem
from billing.services import installation as installation_service
from billing.services.push import usage_push
from metering.models import Meter
from tests.billing.test_push import (
    crash_after_answer,
    hours_ago,
    make_event,
    make_events,
    stripe_total,
)
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

Status = PushLedgerEntry.Status


@pytest.fixture
def account():
    return AccountFactory(external_id="answers-acme", name="Acme")


@pytest.fixture
def storage():
    return MeterFactory(code="storage", aggregation=Meter.Aggregation.SUM, value_property="gb")


# --- 9: v1's codeless "An event already exists with identifier" --------------------------------


def test_a_repeated_identifier_is_acknowledged_and_the_24_hour_check_counts_it(
    fake, account, storage, monkeypatch
):
    first = make_event(account, storage, Decimal("4"), hours_ago(30))
    make_event(account, storage, Decimal("6"), hours_ago(30))
    crash_after_answer(monkeypatch)
    with pytest.raises(Exception, match="killed"):
        usage_push()  # Stripe has both; the answers were never recorded
    monkeypatch.undo()
    # The first is sent again under another idempotency key (as after a saved 500): Stripe
    # answers 400 "An event already exists with identifier ...".
    entry = PushLedgerEntry.objects.get(event_id=first.pk)
    entry.idempotency_key = entry.payload["idempotency_key"] = f"{entry.idempotency_key}~2"
    entry.save()

    usage_push(max_entries=1)

    entry.refresh_from_db()
    assert fake.calls("/v1/billing/meter_events")[-1]["status"] == 400
    assert entry.status == Status.ACKNOWLEDGED  # counted by Stripe: not `rejected`
    # A day later the other one is stale: the day check must count the first as done.
    fake.advance(25 * 3600)
    PushLedgerEntry.objects.filter(status=Status.PENDING).update(
        first_sent_at=datetime.now(UTC) - timedelta(hours=25)
    )

    result = usage_push(now=datetime.now(UTC) + timedelta(hours=1))

    assert result.stale_acknowledged == 1 and result.stale_failed == 0
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.ACKNOWLEDGED}
    assert stripe_total(fake, account, storage) == Decimal(10)


# --- 10: a saved 500 replayed with Stripe-Should-Retry: false ----------------------------------


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
def test_a_saved_500_is_sent_again_next_run_under_a_new_key_and_counted_once(
    fake, account, storage, applied
):
    make_event(account, storage, Decimal("3"), hours_ago(1))
    fake.server_error_next(1, applied=applied)

    first = usage_push()

    entry = PushLedgerEntry.objects.get()
    assert first.retry_later == 1
    assert entry.status == Status.PENDING
    assert entry.idempotency_key == f"{entry.identifier}~2"
    assert entry.payload["idempotency_key"] == entry.idempotency_key
    assert len(fake.calls("/v1/billing/meter_events")) == 1  # the same key is not retried

    second = usage_push()

    assert second.acknowledged == 1
    entry.refresh_from_db()
    assert entry.status == Status.ACKNOWLEDGED
    assert len(fake.calls("/v1/billing/meter_events")) == 2
    assert stripe_total(fake, account, storage) == Decimal(3)


# --- 11: expired v2 session, 409 idempotency errors --------------------------------------------


def test_an_expired_stream_session_is_renewed_inside_the_push(fake, account, storage):
    provider = get_provider("stripe")
    make_events(account, storage, Decimal(1), [hours_ago(2 + n / 100) for n in range(20)])
    usage_push(provider=provider)
    # Stripe ends the session before our copy of expires_at says so.
    fake.sessions.update({token: fake.now() - 1 for token in fake.sessions})
    make_events(account, storage, Decimal(1), [hours_ago(1 + n / 100) for n in range(20)])

    result = usage_push(provider=provider)

    assert result.sent == 20
    statuses = [c["status"] for c in fake.calls("/v2/billing/meter_event_stream")]
    assert statuses == [200, 401, 200]
    assert stripe_total(fake, account, storage) == Decimal(40)


def test_a_409_for_a_key_in_flight_leaves_the_entry_for_the_next_run(fake, account, storage):
    event = make_event(account, storage, Decimal("2"), hours_ago(1))
    prefix = installation_service.installation_id()
    fake.in_flight_keys.add(f"mo-{prefix}-e{event.pk}")

    result = usage_push()

    entry = PushLedgerEntry.objects.get()
    assert result.retry_later == 1
    assert entry.status == Status.PENDING and entry.error_code == "idempotency_key_in_flight"
    fake.in_flight_keys.clear()

    usage_push()

    entry.refresh_from_db()
    assert entry.status == Status.ACKNOWLEDGED
    assert stripe_total(fake, account, storage) == Decimal(2)


# --- 12: more than 15 significant digits -------------------------------------------------------


@pytest.mark.parametrize("events", [3, 30], ids=["v1", "v2-stream"])
def test_a_sum_value_past_15_digits_is_split_into_parts_that_add_up_exactly(
    fake, account, storage, events
):
    value = Decimal("12345678901234.567891234567")  # 26 significant digits
    make_events(account, storage, value, [hours_ago(1 + n / 100) for n in range(events)])

    result = usage_push()

    assert result.rejected == 0
    assert fake.error_reports == []  # nothing the stream drops later
    with localcontext() as context:
        context.prec = 60
        assert stripe_total(fake, account, storage) == value * events
    entry = PushLedgerEntry.objects.order_by("pk").first()
    assert entry.value == value
    assert fake.count_identifier(entry.identifier) == 1
    assert fake.count_identifier(f"{entry.identifier}.p2") == 1
    assert entry.status in PushLedgerEntry.DONE


def test_a_period_to_date_value_past_15_digits_is_refused_not_sent(fake, account):
    peak = MeterFactory(code="peak", aggregation=Meter.Aggregation.MAX, value_property="gb")
    make_event(account, peak, Decimal("1234567890.1234567"), hours_ago(1))

    result = usage_push()

    entry = PushLedgerEntry.objects.get()
    assert result.sent == 0 and result.acknowledged == 0
    assert entry.status == Status.REJECTED and entry.error_code == "value_too_many_digits"
    assert fake.calls("/v1/billing/meter_events") == []


# --- 13: identifiers carry an installation id kept in the database -----------------------------


def test_identifiers_carry_the_installation_id_so_another_installations_are_no_duplicates(
    fake, account, storage
):
    event = make_event(account, storage, Decimal("5"), hours_ago(1))
    # Another installation on the same Stripe account (or this one before a restore) already
    # sent an event under the bare database id, within Stripe's 24 hours.
    other = get_provider("stripe", key_prefix="other")
    customer = other.ensure_customer(external_id="someone-else", name="Other")
    other.ensure_meter(spec=__import__("billing.services.push", fromlist=["x"]).meter_spec(storage))
    other.report_usage(
        [
            UsageItem(
                f"mo-e{event.pk}",
                f"mo-e{event.pk}",
                f"mo_{storage.code}",
                customer,
                Decimal(1),
                hours_ago(1),
            )
        ]
    )

    usage_push()

    installation = PushInstallation.objects.get()
    entry = PushLedgerEntry.objects.get()
    assert entry.identifier == f"mo-{installation.installation_id}-e{event.pk}"
    assert entry.idempotency_key == entry.identifier
    assert stripe_total(fake, account, storage) == Decimal(5)  # not dropped as a duplicate


def test_a_restored_database_gets_a_new_installation_id_and_old_entries_keep_theirs(
    fake, account, storage, monkeypatch
):
    make_event(account, storage, Decimal("1"), hours_ago(1))
    usage_push()
    before = PushInstallation.objects.get().installation_id
    old = PushLedgerEntry.objects.get()
    # A dump restored into a new database: another database oid.
    real = installation_service._database_oid
    monkeypatch.setattr(installation_service, "_database_oid", lambda: real() + 1)
    make_event(account, storage, Decimal("2"), hours_ago(1))

    usage_push()

    row = PushInstallation.objects.get()
    assert row.installation_id != before
    assert [p["id"] for p in row.previous_ids] == [before]
    old.refresh_from_db()
    assert old.identifier.startswith(f"mo-{before}-")
    new = PushLedgerEntry.objects.exclude(pk=old.pk).get()
    assert new.identifier.startswith(f"mo-{row.installation_id}-")
    assert stripe_total(fake, account, storage) == Decimal(3)


# --- 14: Retry-After past the cap ends the run ---------------------------------------------------


def test_a_long_retry_after_ends_the_run_and_the_next_run_continues(fake, account, storage):
    make_events(account, storage, Decimal(1), [hours_ago(1 + n / 10) for n in range(3)])
    fake.retry_after = "3600"
    fake.fail_next(1)
    started = time.monotonic()

    result = usage_push()

    assert time.monotonic() - started < 10  # did not sleep an hour holding the lock
    assert "Retry-After" in result.halted
    assert set(PushLedgerEntry.objects.values_list("status", flat=True)) == {Status.PENDING}
    fake.retry_after = "0"

    again = usage_push()

    assert again.acknowledged == 3 and not again.halted
    assert stripe_total(fake, account, storage) == Decimal(3)


def test_a_split_value_whose_part_got_a_saved_500_is_completed_next_run_exactly_once(
    fake, account, storage
):
    value = Decimal("1234567890.1234567891")  # 20 digits: two parts
    make_event(account, storage, value, hours_ago(1))
    fake.server_error_next(1)  # the first part fails (nothing applied); the second goes

    first = usage_push()

    entry = PushLedgerEntry.objects.get()
    assert first.retry_later == 1
    assert entry.idempotency_key == f"{entry.identifier}~2"

    usage_push()

    entry.refresh_from_db()
    assert entry.status == Status.ACKNOWLEDGED  # the second part answered "already exists"
    assert stripe_total(fake, account, storage) == value
    assert fake.count_identifier(entry.identifier) == 1
    assert fake.count_identifier(f"{entry.identifier}.p2") == 1
