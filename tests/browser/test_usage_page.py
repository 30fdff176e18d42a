"""A Support agent finds an account by search and reads its usage page in a real browser."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from metering import periods
from metering.models import Meter
from metering.services import rollups
from tests.metering.factories import AccountFactory, MeterFactory
from tests.metering.rollup_support import event, insert

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "support-browser-9"


def _seed():
    account = AccountFactory(
        external_id="acme-corp",
        name="Acme Corp",
        timezone="Europe/Berlin",
        metadata={"limits": {"api_calls": 400}},
    )
    calls = MeterFactory(
        code="api_calls", name="API calls", unit="calls", dimensions=["endpoint", "region"]
    )
    tokens = MeterFactory(
        code="tokens",
        name="LLM tokens",
        aggregation=Meter.Aggregation.SUM,
        value_property="n",
        unit="tokens",
    )
    now = timezone.now()
    today = periods.local_date(now, account.timezone)
    # From the start of the previous month up to now: both periods have data on every day.
    first = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    endpoints = ["/v1/search", "/v1/items", "/v1/login", "/v1/export"]
    events = []
    for offset, day in enumerate(periods.iter_days(first, today + timedelta(days=1))):
        start = periods.day_start_utc(day, account.timezone)
        for n in range(3 + (offset * 7) % 11):
            at = start + timedelta(minutes=50 * n + 5)
            if at >= now:
                break
            endpoint = endpoints[(n + offset) % len(endpoints)]
            events.append(event(account, calls, at, properties={"endpoint": endpoint}))
            events.append(event(account, tokens, at, f"{100 + 13 * n}.5"))
    insert(*events)
    rollups.rollup_drain()
    return account


def test_support_agent_opens_an_account_usage_page_from_a_search(
    live_server, page, output_dir, django_user_model
):
    _seed()
    user = django_user_model.objects.create_user(username="sam", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))

    page.goto(f"{live_server.url}/admin/login/?next=/admin/metering/account/")
    page.fill("#id_username", "sam")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/metering/account/")

    page.fill("#searchbar", "acme")
    page.press("#searchbar", "Enter")
    # One account found: its page opens straight away (backoffice.admin.accounts).
    page.wait_for_url("**/admin/metering/account/*/change/")
    page.click("a.usage-dashboard-link")
    page.wait_for_url("**/usage/")

    # Three charts, each drawn by plotly.js with data in it.
    page.wait_for_selector("#usage-cumulative .main-svg")
    assert page.locator(".js-plotly-plot").count() == 3
    daily_bars = page.locator("#usage-daily .trace.bars .point path")
    assert daily_bars.count() >= 10
    assert page.locator("#usage-breakdown .trace.bars").count() >= 4  # one per endpoint
    assert page.locator("#usage-cumulative .scatterlayer .trace").count() >= 3  # usage + limit
    summary = page.inner_text("#usage-summary")
    assert "Europe/Berlin" in summary and "Acme Corp" in summary
    assert "Usage per day" in page.text_content("#usage-daily .gtitle")
    totals = page.inner_text("#usage-totals")
    assert "API calls" in totals and "400" in totals
    page.screenshot(path=str(output_dir / "usage_page.png"), full_page=True)
    page.locator("#usage-summary").scroll_into_view_if_needed()
    page.screenshot(path=str(output_dir / "usage_page_top.png"))
    for chart in ("daily", "breakdown", "cumulative"):
        page.locator(f"#usage-{chart}").screenshot(path=str(output_dir / f"usage_{chart}.png"))
    assert page.js_errors == []

    # A click on a bar lists that day's raw events for the account.
    bar = daily_bars.nth(0)
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_url("**/admin/metering/usageevent/?account__id__exact=*")
    assert "occurred_at__gte=" in page.url
    assert page.locator("#result_list tbody tr").count() >= 1
    assert page.js_errors == []
