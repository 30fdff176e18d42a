"""Management commands: create_api_key, demo and ingest_file."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from metering.api.authentication import ApiKeyAuthentication
from metering.models import Account, ApiKey, Meter, QuarantinedEvent, UsageEvent
from metering.services.api_keys import api_key_hash
from metering.services.demo import DEMO_API_KEY, DEMO_PASSWORD, demo_accounts
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db


def _run(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **kwargs)
    return out.getvalue()


# --- create_api_key --------------------------------------------------------------------------


def test_create_api_key_prints_a_working_key_as_the_last_line(rf):
    output = _run("create_api_key", "--name", "billing-backend", "--scopes", "ingest,read")

    lines = output.strip().splitlines()
    raw_key = lines[-1]
    assert len(lines) > 1
    request = rf.get("/", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    _user, key = ApiKeyAuthentication().authenticate(request)
    assert key.name == "billing-backend"
    assert key.scopes == ["ingest", "read"]
    assert key.key_hash == api_key_hash(raw_key)
    assert raw_key not in output.strip().splitlines()[:-1]


def test_create_api_key_rejects_unknown_scopes_clearly():
    with pytest.raises(CommandError, match=r"Unknown scopes \['admin'\]"):
        _run("create_api_key", "--name", "x", "--scopes", "ingest,admin")
    assert not ApiKey.objects.exists()


# --- demo ------------------------------------------------------------------------------------

END = date(2024, 6, 3)  # a Monday


def _state() -> dict:
    return {
        "accounts": Account.objects.count(),
        "meters": Meter.objects.count(),
        "events": UsageEvent.objects.count(),
        "quarantined": QuarantinedEvent.objects.count(),
        "users": get_user_model().objects.count(),
        "keys": ApiKey.objects.count(),
        "account_history": Account.history.count(),
        "meter_history": Meter.history.count(),
    }


def test_demo_is_idempotent_and_covers_zones_meters_users_and_quarantine(settings):
    settings.DEBUG = True
    args = ("demo", "--days", "4", "--accounts", "7", "--end-date", END.isoformat())

    first_output = _run(*args)
    first = _state()
    second_output = _run(*args)

    assert _state() == first
    assert "accepted 0" in second_output
    assert "conflict 0" in second_output and "rejected 0" in second_output
    assert "conflict 0" in first_output and "rejected 0" in first_output
    assert first["accounts"] == 7 and first["meters"] == 5 and first["events"] > 500
    zones = set(Account.objects.values_list("timezone", flat=True))
    assert {"America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu"} <= zones
    assert {"Australia/Sydney", "UTC"} <= zones
    assert set(Meter.objects.values_list("aggregation", flat=True)) >= {
        "count",
        "sum",
        "max",
        "unique_count",
    }
    assert Meter.objects.get(code="api_calls").dimensions == ["endpoint", "region"]
    assert QuarantinedEvent.objects.filter(reason="unknown_account").exists()
    # Nothing lands on or after the end date, so nothing was ever in the future.
    assert not UsageEvent.objects.filter(occurred_at__date__gte=END).exists()
    for username, group in (("support", "Support"), ("manager", "Manager"), ("auditor", "Auditor")):
        user = authenticate(username=username, password=DEMO_PASSWORD)
        assert user is not None and user.is_staff
        assert list(user.groups.values_list("name", flat=True)) == [group]
    assert authenticate(username="admin", password=DEMO_PASSWORD).is_superuser
    assert DEMO_API_KEY in first_output and DEMO_API_KEY in second_output
    assert ApiKey.objects.get(key_hash=api_key_hash(DEMO_API_KEY)).has_scope("ingest")


def test_demo_values_are_exact_decimals_from_the_meter_properties(settings):
    settings.DEBUG = True
    _run("demo", "--days", "1", "--accounts", "2", "--end-date", END.isoformat())

    storage = UsageEvent.objects.filter(meter__code="storage_gb").first()
    compute = UsageEvent.objects.filter(meter__code="compute_seconds").first()
    users = UsageEvent.objects.filter(meter__code="active_users").first()

    assert storage.value == Decimal(storage.properties["gb"])
    assert compute.value == Decimal(compute.properties["seconds"])
    assert users.unique_value == users.properties["user_id"]


def test_demo_has_weekly_seasonality_and_a_spiking_account(settings):
    settings.DEBUG = True
    days = 14
    _run("demo", "--days", str(days), "--accounts", "4", "--end-date", END.isoformat())

    spiking = next(a for a in demo_accounts(4) if a.spikes)
    per_day: dict[tuple[str, date], int] = defaultdict(int)
    for external_id, zone, occurred_at in UsageEvent.objects.filter(
        meter__code="api_calls"
    ).values_list("account__external_id", "account__timezone", "occurred_at"):
        per_day[external_id, occurred_at.astimezone(ZoneInfo(zone)).date()] += 1

    weekday = [
        n for (acct, d), n in per_day.items() if acct != spiking.external_id and d.weekday() < 5
    ]
    weekend = [
        n for (acct, d), n in per_day.items() if acct != spiking.external_id and d.weekday() >= 5
    ]
    assert sum(weekday) / len(weekday) > 2 * sum(weekend) / len(weekend)

    # The spike (the last three days) against the same weekday a week before.
    for spike_day in (END - timedelta(days=2), END - timedelta(days=3)):
        week_before = per_day[spiking.external_id, spike_day - timedelta(days=7)]
        assert per_day[spiking.external_id, spike_day] > 3 * week_before, spike_day


def test_demo_refuses_to_run_with_debug_off_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        _run("demo", "--days", "1", "--accounts", "1")
    assert not Account.objects.exists()

    _run("demo", "--days", "1", "--accounts", "1", "--force", "--end-date", END.isoformat())
    assert Account.objects.count() == 1


def test_demo_if_empty_does_nothing_when_an_account_exists(settings):
    settings.DEBUG = True
    AccountFactory(external_id="real-customer")

    output = _run("demo", "--if-empty", "--days", "1", "--accounts", "2")

    assert "not loaded" in output
    assert list(Account.objects.values_list("external_id", flat=True)) == ["real-customer"]
    assert not get_user_model().objects.filter(username="admin").exists()


# --- ingest_file -----------------------------------------------------------------------------


@pytest.fixture
def ingest_setup():
    AccountFactory(external_id="acme")
    MeterFactory(code="tokens", aggregation="sum", value_property="tokens", dimensions=["model"])


def _lago(n: int, **overrides) -> dict:
    event = {
        "transaction_id": f"f-{n}",
        "external_customer_id": "acme",
        "code": "tokens",
        "timestamp": "2024-05-01T12:00:00Z",
        "properties": {"tokens": str(100 + n), "model": "mini"},
    }
    event.update(overrides)
    return event


def test_ingest_file_jsonl_reports_a_malformed_line_by_number_and_keeps_the_rest(
    tmp_path, ingest_setup
):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(_lago(n)) for n in range(5)]
    lines.insert(2, '{"transaction_id": "broken", ')  # line 3
    lines.append(json.dumps(_lago(9, external_customer_id="nobody")))  # line 7: quarantined
    lines.append(json.dumps(_lago(10, properties={"tokens": "lots"})))  # line 8: rejected
    path.write_text("\n".join(lines) + "\n\n")

    output = _run("ingest_file", str(path), "--batch-size", "2")

    assert "accepted 5" in output
    assert "quarantined 1" in output
    assert "rejected 2" in output
    assert "line 3: rejected: malformed_json" in output
    assert "line 8: rejected: properties.tokens: invalid_value" in output
    assert UsageEvent.objects.filter(account__external_id="acme").count() == 5

    again = _run("ingest_file", str(path))
    # The quarantined line is kept once: sent again, it is a duplicate of the kept copy.
    assert "accepted 0, duplicate 6, quarantined 0" in again
    assert UsageEvent.objects.count() == 5


def test_ingest_file_csv_with_property_columns_and_a_json_properties_column(tmp_path, ingest_setup):
    path = tmp_path / "events.csv"
    path.write_text(
        "transaction_id,external_customer_id,code,timestamp,properties.tokens,properties.model\n"
        "c-1,acme,tokens,1714564800,120,mini\n"
        "c-2,acme,tokens,2024-05-01T13:00:00Z,30.5,large\n"
        'c-3,acme,tokens,2024-05-01T14:00:00Z,"1,5",mini,extra\n'
        "c-4,acme,tokens,2024-05-01T15:00:00Z,,\n"
    )
    json_path = tmp_path / "more.csv"
    json_path.write_text(
        "transaction_id,external_customer_id,code,timestamp,properties\n"
        'j-1,acme,tokens,2024-05-01T16:00:00Z,"{""tokens"": 7, ""model"": ""mini""}"\n'
        "j-2,acme,tokens,2024-05-01T16:00:00Z,{not json\n"
    )

    output = _run("ingest_file", str(path))
    json_output = _run("ingest_file", str(json_path), "--format", "lago")

    assert "accepted 2" in output and "rejected 2" in output
    assert "line 4: rejected: too_many_columns" in output
    assert "line 5: rejected" in output
    assert "accepted 1" in json_output and "line 3: rejected: malformed_json" in json_output
    values = dict(UsageEvent.objects.values_list("transaction_id", "value"))
    assert values == {"c-1": Decimal("120"), "c-2": Decimal("30.5"), "j-1": Decimal("7")}
    assert UsageEvent.objects.get(transaction_id="c-1").occurred_at.isoformat() == (
        "2024-05-01T12:00:00+00:00"
    )


def test_ingest_file_reads_cloudevents_lines(tmp_path, ingest_setup):
    path = tmp_path / "cloud.ndjson"
    path.write_text(
        json.dumps(
            {
                "specversion": "1.0",
                "id": "ce-1",
                "source": "//billing/test",
                "type": "tokens",
                "subject": "acme",
                "time": "2024-05-01T12:00:00Z",
                "data": {"tokens": "5", "model": "mini"},
            }
        )
        + "\n"
    )

    output = _run("ingest_file", str(path), "--format", "cloudevents")

    assert "accepted 1" in output
    assert UsageEvent.objects.get().source == "//billing/test"


def test_ingest_file_fail_on_error_exits_non_zero_after_the_summary(tmp_path, ingest_setup):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n" + json.dumps(_lago(1)) + "\n")

    with pytest.raises(CommandError, match="1 events were rejected"):
        _run("ingest_file", str(path), "--fail-on-error")
    assert UsageEvent.objects.count() == 1


def test_ingest_file_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        _run("ingest_file", str(tmp_path / "nope.jsonl"))


# --- bulk loads leave fresh planner statistics -------------------------------------------------


def _planner_rows(model) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table]
        )
        return cursor.fetchone()[0]


def test_demo_leaves_the_planner_an_estimate_close_to_the_real_event_count(settings):
    """The admin's events list shows the planner's estimate; a never-analysed table gave
    15,092 for 134,235 events after `make run`."""
    settings.DEBUG = True
    _run("demo", "--days", "3", "--accounts", "5", "--end-date", END.isoformat())

    events = UsageEvent.objects.count()
    assert events > 300
    assert _planner_rows(UsageEvent) == pytest.approx(events, rel=0.05)
    assert _planner_rows(QuarantinedEvent) == pytest.approx(
        QuarantinedEvent.objects.count(), rel=0.05
    )


def test_ingest_file_leaves_the_planner_an_estimate_close_to_the_real_event_count(
    tmp_path, ingest_setup
):
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(_lago(n)) for n in range(400)) + "\n")

    _run("ingest_file", str(path), "--batch-size", "100")

    assert UsageEvent.objects.count() == 400
    assert _planner_rows(UsageEvent) == pytest.approx(400, rel=0.05)
