"""The projected-invoice panel in the admin, its snapshot chart and the snapshot list."""

from __future__ import annotations

import datetime as dt

import plotly.graph_objects as go
import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.charts import ProjectionPoint, projection_history_figure
from billing.periods import local_date
from billing.services.projection import projection_snapshot_take
from tests.billing.factories import AccountFactory
from tests.billing.projection_scenarios import D, api_calls_per_day, api_calls_scenario, sum_usage

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def scenario():
    now = timezone.now()
    today = local_date(now, "UTC")
    s = api_calls_scenario(now=now, started=today - dt.timedelta(days=40))
    sum_usage(s.account, s.meter, today - dt.timedelta(days=40), today, api_calls_per_day)
    return s


@pytest.fixture
def support_user(django_user_model):
    user = django_user_model.objects.create_user(
        username="support", password="x-irrelevant-9", is_staff=True
    )
    user.groups.add(Group.objects.get(name="Support"))
    return user


def _url(account, **query) -> str:
    url = reverse("admin:billing_projection_panel", args=[account.pk])
    return url + ("?embed=1" if query.get("embed") else "")


def test_support_sees_lines_explanations_totals_and_the_snapshot_chart(
    scenario, support_user, django_assert_max_num_queries
):
    today = local_date(timezone.now(), "UTC")
    projection_snapshot_take(account=scenario.account, on_date=today - dt.timedelta(days=1))
    projection_snapshot_take(account=scenario.account, on_date=today)
    client = _client(support_user)

    with django_assert_max_num_queries(30):
        response = client.get(_url(scenario.account))

    assert response.status_code == 200
    html = response.content.decode()
    invoice = response.context["invoice"]
    assert [row["line"].kind for row in response.context["rows"]] == [
        "plan_fee",
        "usage",
        "minimum_commitment",
    ]
    calls = invoice.usage_lines[0]
    assert calls.explanation in html.replace("&#x27;", "'")
    assert "of them to /v1/search" in html
    assert response.context["projected_total"] in html
    assert response.context["previous_total"] is not None
    assert response.context["snapshot_count"] in (1, 2)  # yesterday may be the last period
    assert 'id="projection-history"' in html
    assert html.count("plotly-basic-") == 1  # plotly.js once, from our static files
    assert "cdn.plot.ly" not in html
    assert 'class="breadcrumbs"' in html


def test_the_embedded_panel_has_no_admin_chrome_and_may_be_framed_by_the_admin(
    scenario, admin_user
):
    response = _client(admin_user).get(_url(scenario.account, embed=True))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="projected-invoice"' in html
    assert 'class="breadcrumbs"' not in html
    assert '<base target="_top">' in html
    assert response["X-Frame-Options"] == "SAMEORIGIN"


def test_staff_without_view_permissions_get_403(scenario, django_user_model):
    user = django_user_model.objects.create_user(
        username="nobody", password="x-irrelevant-9", is_staff=True
    )

    response = _client(user).get(_url(scenario.account))

    assert response.status_code == 403


def test_an_account_without_a_subscription_says_so(admin_user):
    account = AccountFactory()

    response = _client(admin_user).get(_url(account))

    assert response.status_code == 200
    assert b'data-code="no_active_subscription"' in response.content


def test_the_snapshot_list_is_read_only(scenario, admin_user):
    projection_snapshot_take(account=scenario.account, on_date=local_date(timezone.now(), "UTC"))
    client = _client(admin_user)

    response = client.get(reverse("admin:billing_projectionsnapshot_changelist"))

    assert response.status_code == 200
    assert scenario.account.external_id.encode() in response.content
    assert client.get(reverse("admin:billing_projectionsnapshot_add")).status_code == 403


def test_the_usage_page_include_frames_the_embedded_panel(scenario, admin_user):
    from django.template.loader import render_to_string

    html = render_to_string(
        "admin/billing/projection/usage_include.html", {"account": scenario.account}
    )

    assert f'src="{_url(scenario.account)}?embed=1"' in html


def test_history_figure_draws_exact_amounts_with_levels_for_previous_and_minimum():
    figure = projection_history_figure(
        points=[
            ProjectionPoint(day=D(2024, 3, 3), to_date_minor=5_000_00, projected_minor=6_100_50),
            ProjectionPoint(day=D(2024, 3, 2), to_date_minor=5_000_00, projected_minor=5_900_00),
        ],
        currency="USD",
        period_start=D(2024, 3, 1),
        last_day=D(2024, 3, 31),
        previous_total_minor=6_169_00,
        minimum_commitment_minor=5_000_00,
        live=ProjectionPoint(day=D(2024, 3, 4), to_date_minor=5_000_00, projected_minor=6_249_00),
        title="t",
    )

    go.Figure(figure)  # plotly accepts it
    projected, so_far, live = figure["data"]
    assert projected["x"] == ["2024-03-02", "2024-03-03"]
    assert projected["y"] == ["5900.00", "6100.50"]
    assert projected["text"] == ["$5,900.00", "$6,100.50"]
    assert so_far["y"] == ["5000.00", "5000.00"]
    assert live["y"] == ["6249.00"]
    assert [shape["y0"] for shape in figure["layout"]["shapes"]] == ["6169.00", "5000.00"]
    assert all(not isinstance(v, float) for trace in figure["data"] for v in trace["y"])


def test_history_figure_leaves_out_the_live_point_when_today_has_a_snapshot():
    point = ProjectionPoint(day=D(2024, 3, 3), to_date_minor=1, projected_minor=2)

    figure = projection_history_figure(
        points=[point],
        currency="JPY",
        period_start=D(2024, 3, 1),
        last_day=D(2024, 3, 31),
        live=point,
    )

    assert len(figure["data"]) == 2
    assert figure["data"][0]["y"] == ["2"]
    assert figure["layout"]["shapes"] == []
