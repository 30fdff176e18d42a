"""The push ledger and the simulated provider's records have a row per event: their admin lists
never count the whole table and search only by exact, index-backed values (defect 6)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.models import PushLedgerEntry, SimulatedUsageRecord
from tests.metering.factories import AccountFactory, MeterFactory

pytestmark = pytest.mark.django_db

WHEN = datetime(2026, 11, 20, 12, tzinfo=UTC)


@pytest.fixture
def superuser_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def rows():
    account = AccountFactory(external_id="acme")
    other = AccountFactory(external_id="globex")
    meter = MeterFactory(code="api_calls")
    for n, acct in enumerate([account, other, account]):
        PushLedgerEntry.objects.create(
            provider="simulated",
            identifier=f"mo-e{n}",
            idempotency_key=f"k{n}",
            account=acct,
            meter=meter,
            value=Decimal(1),
            timestamp=WHEN,
            day=WHEN.date(),
        )
        SimulatedUsageRecord.objects.create(
            identifier=f"mo-e{n}",
            customer_id=acct.external_id,
            event_name="api_calls",
            value=Decimal(1),
            sent_timestamp=WHEN,
            timestamp=WHEN,
            received_at=WHEN,
            visible_at=WHEN,
        )


def _sql_on(queries, table: str) -> list[str]:
    return [q["sql"] for q in queries if f'"{table}"' in q["sql"]]


def _full_counts(sqls: list[str]) -> list[str]:
    # A count bounded by a LIMIT (the estimated-count paginator's) reads at most that many rows.
    return [s for s in sqls if "COUNT(" in s.upper() and "LIMIT" not in s.upper()]


@pytest.mark.parametrize(
    ("url_name", "table"),
    [
        ("admin:billing_pushledgerentry_changelist", "billing_pushledgerentry"),
        ("admin:billing_simulatedusagerecord_changelist", "billing_simulatedusagerecord"),
    ],
)
def test_the_list_never_counts_the_whole_table(superuser_client, rows, url_name, table):
    with CaptureQueriesContext(connection) as ctx:
        response = superuser_client.get(reverse(url_name))
    assert response.status_code == 200
    sqls = _sql_on(ctx.captured_queries, table)
    assert sqls
    assert _full_counts(sqls) == []
    # No date hierarchy or facets either: nothing aggregates over the whole table.
    assert not [s for s in sqls if re.search(r"\b(MIN|MAX|DATE_TRUNC)\(", s.upper())]


def _search_sql(client, url_name: str, table: str, term: str) -> tuple[list[str], bytes]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(reverse(url_name), {"q": term})
    assert response.status_code == 200
    return _sql_on(ctx.captured_queries, table), response.content


def test_ledger_search_is_exact_by_identifier_or_account(superuser_client, rows):
    url = "admin:billing_pushledgerentry_changelist"
    sqls, content = _search_sql(superuser_client, url, "billing_pushledgerentry", "mo-e1")
    assert b"mo-e1" in content and b"mo-e0" not in content
    assert not [s for s in sqls if "LIKE" in s.upper() or "UPPER(" in s.upper()]
    assert [s for s in sqls if '"billing_pushledgerentry"."identifier" = ' in s]

    _sqls, content = _search_sql(superuser_client, url, "billing_pushledgerentry", "acme")
    assert b"mo-e0" in content and b"mo-e2" in content and b"mo-e1" not in content

    _sqls, content = _search_sql(superuser_client, url, "billing_pushledgerentry", "mo-e")
    assert b"mo-e0" not in content  # not a substring search


def test_simulated_record_search_is_exact_by_identifier_or_customer(superuser_client, rows):
    url = "admin:billing_simulatedusagerecord_changelist"
    sqls, content = _search_sql(superuser_client, url, "billing_simulatedusagerecord", "globex")
    assert b"mo-e1" in content and b"mo-e0" not in content
    assert not [s for s in sqls if "LIKE" in s.upper() or "UPPER(" in s.upper()]

    _sqls, content = _search_sql(superuser_client, url, "billing_simulatedusagerecord", "mo-e2")
    assert b"mo-e2" in content and b"mo-e0" not in content
