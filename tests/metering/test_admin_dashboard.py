"""The support agent's account usage page: data from rollups, charts, links, permissions, cost."""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import plotly.graph_objects as go
import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.services.plans import plan_create, price_add
from billing.services.subscriptions import subscription_create
from metering import charts, periods
from metering.admin_dashboard import PLOTLY_BUNDLE, PLOTLY_BUNDLE_TRACES, events_url
from metering.dashboard_selectors import (
    BREAKDOWN_TOP,
    RECENT_EVENTS,
    account_limits,
    account_periods,
    account_usage_dashboard,
)
from metering.models import Meter
from metering.services import rollups
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert, utc

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db

A = Meter.Aggregation
# A fixed "now" for selector tests: Wednesday 2024-05-15 10:00 UTC.
AT = utc(2024, 5, 15, 10)


def _client(django_user_model, role: str | None, *, staff: bool = True) -> Client:
    user = django_user_model.objects.create_user(
        username=f"{role or 'nobody'}-{staff}", password="x-irrelevant-9", is_staff=staff
    )
    if role:
        user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support(django_user_model) -> Client:
    return _client(django_user_model, "Support")


@pytest.fixture
def calls():
    return MeterFactory(
        code="api_calls", name="API calls", unit="calls", dimensions=["endpoint", "region"]
    )


@pytest.fixture
def tokens():
    return MeterFactory(
        code="tokens", name="Tokens", aggregation=A.SUM, value_property="n", unit="tokens"
    )


def _usage_url(account) -> str:
    return reverse("admin:metering_account_usage", args=[account.pk])


def _local(account, day: date, hour: int = 12) -> datetime:
    """An instant on the local day, at `hour` local time (a few minutes past the day's start
    when hour=0)."""
    start = periods.day_start_utc(day, account.timezone)
    return start + timedelta(hours=hour, minutes=1)


def _seed_now(account, calls, tokens) -> tuple[date, date]:
    """Events on the first local day of this month and of the previous one (both in the past
    whatever the time of day), rolled up. Returns those two days."""
    today = periods.local_date(timezone.now(), account.timezone)
    first = today.replace(day=1)
    previous_first = (first - timedelta(days=1)).replace(day=1)
    insert(
        *(
            event(account, calls, _local(account, first, 0), properties={"endpoint": "/a"})
            for _ in range(3)
        ),
        event(account, tokens, _local(account, first, 0), "2.5"),
        event(account, tokens, _local(account, first, 0), "1.000000000001"),
        *(
            event(account, calls, _local(account, previous_first), properties={"endpoint": "/b"})
            for _ in range(7)
        ),
    )
    rollups.rollup_drain()
    return first, previous_first


# --- the selector (fixed instants) --------------------------------------------------------------


def test_without_a_subscription_the_periods_are_calendar_months_in_the_account_zone():
    account = AccountFactory(timezone="Asia/Kathmandu")
    # 2024-05-31 18:20 UTC is already June 1 (00:05) in Kathmandu (+5:45).
    found = account_periods(account=account, at=utc(2024, 5, 31, 18, 20))

    assert (found.current.first, found.current.end) == (date(2024, 6, 1), date(2024, 7, 1))
    assert (found.previous.first, found.previous.end) == (date(2024, 5, 1), date(2024, 6, 1))
    assert found.current.kind == "calendar" and found.included_units == {}


def test_dashboard_compares_this_period_with_the_previous_day_by_day(calls, tokens):
    account = AccountFactory(timezone="Asia/Kolkata")
    insert(
        event(account, calls, utc(2024, 5, 1, 0), properties={"endpoint": "/a"}),
        event(account, calls, utc(2024, 5, 2, 0), properties={"endpoint": "/a"}),
        event(account, calls, utc(2024, 5, 2, 1), properties={"endpoint": "/b"}),
        event(account, calls, utc(2024, 4, 1, 0), properties={"endpoint": "/a"}),
        event(account, tokens, utc(2024, 4, 30, 18, 29), "4"),  # April 30, 23:59 in Kolkata
        event(account, tokens, utc(2024, 4, 30, 18, 30), "1.5"),  # May 1, 00:00 in Kolkata
    )
    rollups.rollup_drain()

    data = account_usage_dashboard(account=account, at=AT)

    assert data.today == date(2024, 5, 15)
    by_code = {p.meter.code: p for p in data.panels}
    assert set(by_code) == {"api_calls", "tokens"}
    api = by_code["api_calls"]
    assert list(api.current)[:3] == [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)]
    assert (api.current[date(2024, 5, 1)], api.current[date(2024, 5, 2)]) == (1, 2)
    assert api.current[date(2024, 5, 16)] is None  # the future is not zero
    assert api.previous[0] == (date(2024, 4, 1), 1)
    assert (api.current_total, api.previous_total) == (3, 1)
    assert api.to_date[date(2024, 5, 2)] == 3 and api.to_date[date(2024, 5, 31)] is None
    assert (by_code["tokens"].current_total, by_code["tokens"].previous_total) == (
        Decimal("1.5"),
        Decimal(4),
    )
    # The breakdown defaults to the first meter with dimensions and its first dimension.
    assert (data.breakdown.meter.code, data.breakdown.dimension) == ("api_calls", "endpoint")
    assert data.breakdown.series.group_totals == {"/a": 2, "/b": 1}
    assert data.day_bounds[date(2024, 5, 1)] == (utc(2024, 4, 30, 18, 30), utc(2024, 5, 1, 18, 30))


def test_unique_count_to_date_counts_each_value_once_over_the_period():
    account = AccountFactory()
    users = MeterFactory(code="users", aggregation=A.UNIQUE_COUNT, value_property="user")
    insert(
        event(account, users, utc(2024, 5, 1, 9), unique="alice"),
        event(account, users, utc(2024, 5, 1, 9), unique="bob"),
        event(account, users, utc(2024, 5, 2, 9), unique="alice"),
        event(account, users, utc(2024, 5, 3, 9), unique="carol"),
    )
    rollups.rollup_drain()

    panel = account_usage_dashboard(account=account, at=AT).panels[0]

    assert [panel.current[date(2024, 5, d)] for d in (1, 2, 3)] == [2, 1, 1]
    assert [panel.to_date[date(2024, 5, d)] for d in (1, 2, 3, 4)] == [2, 2, 3, 3]
    assert panel.current_total == 3


def test_max_and_latest_to_date_keep_the_peak_and_the_last_value():
    account = AccountFactory()
    peak = MeterFactory(code="peak", aggregation=A.MAX, value_property="n")
    seats = MeterFactory(code="seats", aggregation=A.LATEST, value_property="n")
    insert(
        event(account, peak, utc(2024, 5, 1, 9), "5"),
        event(account, peak, utc(2024, 5, 2, 9), "3"),
        event(account, seats, utc(2024, 5, 1, 9), "10"),
        event(account, seats, utc(2024, 5, 3, 9), "7"),
    )
    rollups.rollup_drain()

    by_code = {p.meter.code: p for p in account_usage_dashboard(account=account, at=AT).panels}

    assert [by_code["peak"].to_date[date(2024, 5, d)] for d in (1, 2, 3)] == [5, 5, 5]
    assert [by_code["seats"].to_date[date(2024, 5, d)] for d in (1, 2, 3)] == [10, 10, 7]


def test_billing_period_and_included_units_come_from_the_subscription(calls):
    account = AccountFactory(timezone="Europe/Berlin", currency="EUR")
    plan = plan_create(code="pro", name="Pro", currency="EUR")
    price_add(plan=plan, meter=calls, model="per_unit", unit_price="0.001", included_units=1000)
    subscription_create(account=account, plan=plan, started_at=date(2024, 3, 10), now=AT)
    insert(event(account, calls, utc(2024, 5, 10, 8), properties={"endpoint": "/a"}))
    rollups.rollup_drain()

    data = account_usage_dashboard(account=account, at=AT)

    assert data.periods.current.kind == "billing" and data.periods.plan_name == "Pro"
    assert (data.periods.current.first, data.periods.current.end) == (
        date(2024, 5, 10),
        date(2024, 6, 10),
    )
    assert (data.periods.previous.first, data.periods.previous.end) == (
        date(2024, 4, 10),
        date(2024, 5, 10),
    )
    panel = data.panels[0]
    assert (panel.included_units, panel.cap, panel.current_total) == (1000, 1000, 1)
    assert panel.share_of_cap == Decimal("0.1")


def test_account_limits_come_from_metadata_and_bad_values_are_reported(calls):
    account = AccountFactory(
        metadata={"limits": {"api_calls": 2, "tokens": "12.5", "broken": "lots", "neg": -1}}
    )

    limits, problems = account_limits(account=account)

    assert limits == {"api_calls": Decimal(2), "tokens": Decimal("12.5")}
    assert len(problems) == 2 and "'broken'" in problems[0]
    insert(*(event(account, calls, utc(2024, 5, 2, 9)) for _ in range(3)))
    rollups.rollup_drain()
    panel = account_usage_dashboard(account=account, at=AT).panels[0]
    assert (panel.limit, panel.cap, panel.share_of_cap) == (2, 2, Decimal("150.0"))


def test_breakdown_says_when_values_are_grouped_or_folded_into_other(calls, settings):
    settings.ROLLUP_MAX_DIMENSION_VALUES = 9
    account = AccountFactory()
    insert(
        *(
            event(account, calls, utc(2024, 5, 2, 9), properties={"endpoint": f"/e{n:02d}"})
            for n in range(12)
        )
    )
    rollups.rollup_drain()

    breakdown = account_usage_dashboard(
        account=account, at=AT, meter_code="api_calls", dimension="endpoint"
    ).breakdown

    assert breakdown.series.folded is True  # 12 values > 9 kept per day
    assert breakdown.grouped_for_display is True  # 9 kept > BREAKDOWN_TOP shown by name
    assert len(breakdown.series.group_totals) == BREAKDOWN_TOP + 1
    assert breakdown.series.group_totals["other"] == 12 - BREAKDOWN_TOP
    assert sum(breakdown.series.group_totals.values()) == 12


def test_recent_events_are_the_newest_twenty_across_meters(calls, tokens):
    account = AccountFactory()
    other = AccountFactory()
    base = utc(2024, 5, 1)
    insert(
        *(event(account, calls, base + timedelta(minutes=2 * n)) for n in range(30)),
        *(event(account, tokens, base + timedelta(minutes=2 * n + 1), "1") for n in range(30)),
        event(other, calls, base + timedelta(days=5)),
    )

    recent = account_usage_dashboard(account=account, at=AT).recent_events

    assert len(recent) == RECENT_EVENTS
    assert recent[0].occurred_at == base + timedelta(minutes=59)
    assert [e.occurred_at for e in recent] == sorted((e.occurred_at for e in recent), reverse=True)
    assert {e.meter_code for e in recent} == {"api_calls", "tokens"}


def test_charts_are_valid_plotly_figures(calls, tokens):
    account = AccountFactory(metadata={"limits": {"api_calls": 10}})
    insert(
        event(account, calls, utc(2024, 5, 2, 9), properties={"endpoint": "/a"}),
        event(account, tokens, utc(2024, 5, 2, 9), "3"),
    )
    rollups.rollup_drain()
    data = account_usage_dashboard(account=account, at=AT)
    links = {calls.pk: {date(2024, 5, 2): "/events?day=2"}}

    daily = charts.daily_usage_figure(data.panels, title="Daily", day_links=links)
    figures = [
        daily,
        charts.breakdown_figure(data.breakdown, title="By endpoint"),
        charts.cumulative_figure(data.panels, title="To date"),
    ]

    for figure in figures:
        go.Figure(figure)  # raises on any property plotly.js would not understand
    bars = [t for t in daily["data"] if t["type"] == "bar"]
    assert [t["yaxis"] for t in bars] == ["y", "y2"]
    assert bars[0]["customdata"][1] == "/events?day=2"
    assert bars[0]["y"][1] == 1.0
    limit = [t for t in figures[2]["data"] if t["name"] == "Account limit"]
    assert limit[0]["y"] == [10.0, 10.0]


# --- the page ---------------------------------------------------------------------------------


def test_support_agent_sees_the_page_with_charts_totals_zone_and_period(support, calls, tokens):
    account = AccountFactory(name="Acme", external_id="acme", timezone="Asia/Kathmandu")
    first, previous_first = _seed_now(account, calls, tokens)

    response = support.get(_usage_url(account))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Usage of Acme (acme)" in html
    assert "Asia/Kathmandu" in html
    assert f"{first:%-d %b}" in html and f"{previous_first:%-d %b}" in html
    for div in ("usage-daily", "usage-breakdown", "usage-cumulative"):
        assert f'id="{div}"' in html
    # plotly.js (the partial bundle) is loaded once from our static files, deferred, never
    # inlined or fetched from a CDN; each figure's JSON is in the page once.
    assert "cdn.plot.ly" not in html
    assert len(re.findall(r"<script[^>]*src=\"[^\"]*plotly[^\"]*\.js\"", html)) == 1
    assert len(re.findall(r"<script defer src=\"[^\"]*/plotly-basic-[^\"]+\.min\.js\"", html)) == 1
    assert html.count("metering/charts.js") == 1
    for div in ("usage-daily", "usage-breakdown", "usage-cumulative"):
        assert html.count(f'id="{div}-figure"') == 1
    assert html.count('"barmode"') <= 3 and "Plotly.newPlot" not in html
    assert len(html) < 300_000
    totals = response.context["totals"]
    assert [(r["meter"].code, r["current"], r["previous"]) for r in totals] == [
        ("api_calls", "3", "7"),
        ("tokens", "3.500000000001", "0"),
    ]


def test_page_is_linked_from_the_account_change_page_found_by_search(support, calls, tokens):
    account = AccountFactory(name="Globex", external_id="globex-42")
    AccountFactory(name="Initech", external_id="initech")

    changelist = support.get(reverse("admin:metering_account_changelist"), {"q": "globex"})
    change_url = reverse("admin:metering_account_change", args=[account.pk])
    # One account found: the search opens its page.
    assert changelist.status_code == 302 and changelist["Location"] == change_url

    change = support.get(change_url)
    assert change.status_code == 200
    assert _usage_url(account) in change.content.decode()
    assert "Usage dashboard" in change.content.decode()


@pytest.mark.parametrize("role", ["Support", "Manager", "Auditor"])
def test_every_staff_role_may_view_the_page(django_user_model, role, calls):
    account = AccountFactory()
    client = _client(django_user_model, role)

    assert client.get(_usage_url(account)).status_code == 200


def test_staff_without_the_view_permission_get_403_and_anonymous_users_a_login(
    django_user_model, calls
):
    account = AccountFactory()

    assert _client(django_user_model, None).get(_usage_url(account)).status_code == 403
    anonymous = Client().get(_usage_url(account))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    not_staff = _client(django_user_model, "Support", staff=False).get(_usage_url(account))
    assert not_staff.status_code == 302


def test_unknown_account_is_404(support):
    assert support.get(reverse("admin:metering_account_usage", args=[987654])).status_code == 404


def test_page_query_count_is_bounded_and_does_not_grow_with_events_or_days(
    support, calls, tokens, django_assert_max_num_queries
):
    account = AccountFactory()
    _seed_now(account, calls, tokens)
    url = _usage_url(account)
    support.get(url)  # warm the session and permission caches like any second request

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert support.get(url).status_code == 200
        return len(ctx.captured_queries)

    few = count()
    today = periods.local_date(timezone.now(), account.timezone)
    start = periods.day_start_utc(today.replace(day=1) - timedelta(days=40), account.timezone)
    insert(
        *(
            event(
                account,
                calls,
                start + timedelta(minutes=37 * n),
                properties={"endpoint": f"/e{n % 13}"},
            )
            for n in range(1500)
            if start + timedelta(minutes=37 * n) < timezone.now()
        )
    )
    rollups.rollup_drain()

    assert count() == few
    with django_assert_max_num_queries(20):
        support.get(url)


def test_breakdown_select_picks_the_meter_and_dimension(support, calls, tokens):
    account = AccountFactory()
    _seed_now(account, calls, tokens)

    response = support.get(_usage_url(account), {"breakdown": "api_calls:region"})

    breakdown = response.context["data"].breakdown
    assert (breakdown.meter.code, breakdown.dimension) == ("api_calls", "region")
    assert 'value="api_calls:region" selected' in response.content.decode()
    wrong = support.get(_usage_url(account), {"breakdown": "api_calls:color"})
    assert (
        "Meter api_calls has no dimension 'color'; showing another." in wrong.context["data"].notes
    )
    assert "has no dimension &#x27;color&#x27;" in wrong.content.decode()


def test_day_links_list_exactly_that_local_day_of_the_account(support, calls):
    account = AccountFactory(timezone="Asia/Kolkata")
    other = AccountFactory()
    day = date(2024, 5, 2)
    start, end = periods.day_bounds_utc(day, account.timezone)  # 2024-05-01 18:30 UTC ...
    insert(
        event(account, calls, start, transaction_id="first-instant"),
        event(account, calls, end - timedelta(microseconds=1), transaction_id="last-instant"),
        event(account, calls, start - timedelta(microseconds=1), transaction_id="day-before"),
        event(account, calls, end, transaction_id="day-after"),
        event(other, calls, start, transaction_id="other-account"),
    )

    url = events_url(account_id=account.pk, start=start, end=end, meter_id=calls.pk)
    response = support.get(url)

    assert response.status_code == 200
    listed = {e.transaction_id for e in response.context["cl"].result_list}
    assert listed == {"first-instant", "last-instant"}
    query = parse_qs(urlsplit(url).query)
    assert query["occurred_at__gte"] == ["2024-05-01T18:30:00+00:00"]


def test_bars_link_to_their_day_and_a_click_handler_follows_the_link(support, calls, tokens):
    account = AccountFactory()
    first, _ = _seed_now(account, calls, tokens)

    response = support.get(_usage_url(account))

    html = response.content.decode()
    # charts.js follows the link of a clicked point for the figures that ask for it.
    assert re.search(r'<div id="usage-daily" class="mo-chart"[^>]* data-follow-links>', html)
    assert 'id="usage-cumulative" class="mo-chart" data-config="{&quot;displaylogo' in html
    assert "data-follow-links" not in html.split('id="usage-cumulative"')[1].split(">")[0]
    start, end = periods.day_bounds_utc(first, account.timezone)
    expected = events_url(account_id=account.pk, start=start, end=end, meter_id=calls.pk)
    # The figure's JSON escapes "/", "<", ">" and "&" (nothing can end its <script> early).
    assert expected.replace("/", "\\u002f").replace("&", "\\u0026") in html


def test_recent_events_table_links_to_each_event_and_its_day(support, calls, tokens):
    account = AccountFactory()
    _seed_now(account, calls, tokens)

    response = support.get(_usage_url(account))

    rows = response.context["recent"]
    assert len(rows) == 12
    newest = rows[0]
    assert newest["url"] == reverse("admin:metering_usageevent_change", args=[newest["event"].id])
    assert newest["url"] in response.content.decode()
    assert "occurred_at__gte" in newest["day_url"]


def test_limit_and_over_limit_are_shown_in_the_totals(support, calls, tokens):
    account = AccountFactory(metadata={"limits": {"api_calls": 2, "tokens": "oops"}})
    _seed_now(account, calls, tokens)

    response = support.get(_usage_url(account))

    row = next(r for r in response.context["totals"] if r["meter"].code == "api_calls")
    assert (row["limit"], row["share"], row["over"]) == ("2", Decimal("150.0"), True)
    html = response.content.decode()
    assert "usage-over" in html
    assert "is not a number; ignored" in html


def test_the_plotly_bundle_and_chart_drawer_are_static_files_that_draw_on_click(support):
    from django.contrib.staticfiles import finders

    bundle = finders.find(PLOTLY_BUNDLE)
    drawer = finders.find("metering/charts.js")
    assert bundle and drawer
    with open(bundle, "rb") as f:
        head = f.read(200)
    # The partial build, a quarter of the full bundle's 4.8 MB.
    assert b"plotly.js (basic - minified)" in head
    assert 1_000_000 < os.path.getsize(bundle) < 1_500_000
    with open(drawer) as f:
        script = f.read()
    assert "plotly_click" in script and "window.location.assign" in script


def test_every_chart_builder_uses_only_trace_types_of_the_bundle(calls, tokens):
    account = AccountFactory()
    _seed_now(account, calls, tokens)
    data = account_usage_dashboard(account=account, meter_code=None, dimension=None)
    figures = [
        charts.daily_usage_figure(data.panels, title="t", day_links={}),
        charts.breakdown_figure(data.breakdown, title="t"),
        charts.cumulative_figure(data.panels, title="t"),
    ]
    traces = {trace.get("type", "scatter") for fig in figures for trace in fig["data"]}
    assert traces and traces <= PLOTLY_BUNDLE_TRACES
    # The other chart builders name their types literally; axis and shape types aside, each is
    # a trace type, and must be one the bundle draws.
    not_traces = {"date", "linear", "log", "category", "line", "rect", "path", "circle"}
    for module in ("billing", "alerts", "reconciliation", "metering"):
        source = (ROOT / module / "charts.py").read_text()
        used = set(re.findall(r'"type": "(\w+)"', source)) - not_traces
        assert used and used <= PLOTLY_BUNDLE_TRACES, (module, used)


def test_page_for_an_account_without_usage_says_so(support):
    account = AccountFactory()

    response = support.get(_usage_url(account))

    assert response.status_code == 200
    assert "No usage in this period or the previous one." in response.content.decode()
    assert "No events yet." in response.content.decode()
    assert 'id="usage-daily"' not in response.content.decode()


def test_page_with_a_subscription_states_the_billing_period_plan_and_included_units(
    support, calls, tokens, django_assert_max_num_queries
):
    account = AccountFactory()
    plan = plan_create(code="pro", name="Pro plan", currency="USD")
    price_add(plan=plan, meter=calls, model="per_unit", unit_price="0.001", included_units=1000)
    today = periods.local_date(timezone.now(), account.timezone)
    subscription_create(account=account, plan=plan, started_at=today - timedelta(days=70))
    _seed_now(account, calls, tokens)
    url = _usage_url(account)
    support.get(url)

    with django_assert_max_num_queries(20):
        response = support.get(url)

    html = response.content.decode()
    assert "Billing period" in html and "Pro plan" in html and "previous billing period" in html
    row = next(r for r in response.context["totals"] if r["meter"].code == "api_calls")
    assert row["included"] == "1000"
    assert "Included in plan" in html  # the cumulative chart's line


def test_breakdown_names_events_without_the_property_none_like_the_api(calls):
    account = AccountFactory()
    insert(
        event(account, calls, utc(2024, 5, 2, 9), properties={"endpoint": "/a"}),
        event(account, calls, utc(2024, 5, 2, 9)),
    )
    rollups.rollup_drain()

    breakdown = account_usage_dashboard(
        account=account, at=AT, meter_code="api_calls", dimension="endpoint"
    ).breakdown
    figure = charts.breakdown_figure(breakdown, title="API calls by endpoint")

    names = [trace["name"] for trace in figure["data"]]
    assert any(name.startswith("(none) (1 ") for name in names), names
    assert not any("not set" in name for name in names)
