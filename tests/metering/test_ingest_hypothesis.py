"""Property: for any sequence of batches, what is stored is what a simple model predicts.

Batches mix valid items, retries (same key, same content), conflicts (same key, other content),
invalid items and items for an account that does not exist (quarantined). The model processes
items one by one in order: the first valid delivery of a key wins, later ones are duplicates or
conflicts against it.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.models import UsageEvent
from metering.services.ingest import events_ingest
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

pytestmark = pytest.mark.django_db

KNOWN, UNKNOWN = "acme", "ghost"

items = st.tuples(
    st.sampled_from(["ok", "ok", "ok", "bad_value", "bad_time"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.sampled_from([KNOWN, KNOWN, UNKNOWN]),
    st.sampled_from(["1", "2.5", "0.1"]),
)
batches = st.lists(st.lists(items, max_size=12), min_size=1, max_size=3)


def _item(kind: str, tid: str, customer: str, value: str) -> dict:
    return {
        "transaction_id": tid,
        "external_customer_id": customer,
        "code": "tokens",
        "timestamp": "not a time" if kind == "bad_time" else 1_700_000_000,
        "properties": {"tokens": "lots" if kind == "bad_value" else Decimal(value)},
    }


class Model:
    def __init__(self):
        self.stored: dict[str, str] = {}
        self.quarantined: dict[str, str] = {}

    def apply(self, kind: str, tid: str, customer: str, value: str) -> str:
        if kind == "bad_time" or (kind == "bad_value" and customer == KNOWN):
            return "rejected"
        content = "lots" if kind == "bad_value" else value
        table = self.stored if customer == KNOWN else self.quarantined
        if tid in table:
            return "duplicate" if table[tid] == content else "conflict"
        table[tid] = content
        return "accepted" if customer == KNOWN else "quarantined"


@pytest.fixture
def world():
    AccountFactory(external_id=KNOWN)
    MeterFactory(code="tokens", aggregation="sum", value_property="tokens")


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=batches)
def test_stored_events_equal_the_models_prediction(world, batches):
    model = Model()
    with transaction.atomic():
        for batch in batches:
            expected = [model.apply(*item) for item in batch]

            result = events_ingest(items=[_item(*item) for item in batch], fmt="lago")

            assert [r.status for r in result.results] == expected
            assert [r.index for r in result.results] == list(range(len(batch)))
            assert result.accepted == expected.count("accepted")
            assert result.duplicates == expected.count("duplicate")
            assert result.conflicts == expected.count("conflict")

        stored = {
            tid: value for tid, value in UsageEvent.objects.values_list("transaction_id", "value")
        }
        assert stored == {tid: Decimal(v) for tid, v in model.stored.items()}
        with connection.cursor() as cursor:  # the stored JSON text, so numbers stay exact
            cursor.execute(
                "SELECT transaction_id, properties->>'tokens' FROM metering_quarantinedevent"
            )
            held = dict(cursor.fetchall())
        assert held.keys() == model.quarantined.keys()
        for tid, text in held.items():
            expected_value = model.quarantined[tid]
            if expected_value == "lots":
                assert text == "lots"
            else:
                assert Decimal(text) == Decimal(expected_value)
        transaction.set_rollback(True)


# Text includes what PostgreSQL or UTF-8 cannot hold (NUL, lone surrogates).
texts = st.text(max_size=8) | st.sampled_from(["\ud800", "a\x00", "\udfff", ""])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["transaction_id", "external_customer_id", "code", "timestamp", "properties"]
arbitrary_items = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values),
    st.builds(
        lambda tid, props, ts: {
            "transaction_id": tid,
            "external_customer_id": KNOWN,
            "code": "tokens",
            "timestamp": ts,
            "properties": props,
        },
        texts,
        st.dictionaries(st.sampled_from(["tokens", "x"]), json_values, max_size=2),
        st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), texts),
    ),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(arbitrary_items, max_size=8))
def test_any_json_batch_is_answered_per_item_and_never_with_a_500(world, api_client, events):
    _key, raw = api_key_for(["ingest"])
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    with transaction.atomic():
        response = api_client.generic(
            "POST",
            "/api/v1/events/batch",
            json.dumps({"events": events}),
            content_type="application/json",
        )

        assert response.status_code == 200, response.content
        results = response.json()["results"]
        assert [r["index"] for r in results] == list(range(len(events)))
        for result in results:
            assert result["status"] in {
                "accepted",
                "duplicate",
                "quarantined",
                "conflict",
                "rejected",
            }
            assert (result["status"] in {"conflict", "rejected"}) == bool(result["errors"])
        transaction.set_rollback(True)
