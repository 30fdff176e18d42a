"""The support agent's account usage page in the admin: /admin/metering/account/<id>/usage/.

Wired into AccountAdmin through `account_usage_urls` (AccountAdmin.get_urls); the template is
the admin's `usage_template`, so an admin built on AccountAdmin can render a page that extends
this one (its `projected_invoice` block is left empty here). The data comes from
metering.dashboard_selectors (rollups plus a bounded number of rows), the figures from
metering.charts. Every chart page in the admin draws its figures with `figure_html` and loads
plotly.js once, in its head (templates/admin/metering/charts_js.html): the partial "basic" bundle
vendored under metering/static/metering/vendor (scatter and bar are all the charts use), served
as a static file (hashed, compressed and cached for a year once collected; no CDN, admins may
have no internet access).
"""

from __future__ import annotations

import json
from datetime import date

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from plotly.io.json import to_json_plotly

from metering import charts
from metering.dashboard_selectors import (
    RECENT_EVENTS,
    AccountUsageDashboard,
    account_usage_dashboard,
)
from metering.models import Account

TEMPLATE = "admin/metering/account/usage.html"
# The partial plotly.js bundle (see metering/static/metering/vendor/README.md).
PLOTLY_BUNDLE = "metering/vendor/plotly-basic-4.1.1.min.js"
# Trace types that bundle draws; tests check every chart builder stays within them.
PLOTLY_BUNDLE_TRACES = frozenset({"scatter", "bar", "pie"})
# Kept for callers that passed it as `post_script`: a click on a bar follows its customdata link
# (metering/static/metering/charts.js does it for every figure drawn with follow_links=True).
CLICK_TO_EVENTS_JS = "follow-links"
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d"]}


def account_usage_urls(model_admin) -> list:
    """URLs to put before AccountAdmin's own (its `<path:object_id>/` would catch them)."""
    site = model_admin.admin_site

    def usage(request, account_id: int):
        return account_usage_view(request, account_id=account_id, model_admin=model_admin)

    return [
        path(
            "<int:account_id>/usage/",
            site.admin_view(usage),
            name="metering_account_usage",
        ),
    ]


def plotly_js_url() -> str:
    """The static URL of the plotly.js bundle (hashed once collected)."""
    return static(PLOTLY_BUNDLE)


_JSON_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


def figure_html(
    fig: dict, *, div_id: str, config: dict | None = None, follow_links: bool = False
) -> str:
    """A chart's placeholder and its figure, sent once as inert JSON.

    No script runs here: metering/static/metering/charts.js (loaded with plotly.js, deferred,
    once per page by templates/admin/metering/charts_js.html) draws every placeholder after the
    page is parsed, so the first paint waits for neither plotly.js nor the charts.
    `follow_links`: a click on a point opens the URL in its customdata.
    """
    # plotly's own encoder (dates, Decimals); "<", ">" and "&" escaped so the JSON cannot close
    # its <script> element.
    figure_json = to_json_plotly(fig).translate(_JSON_SCRIPT_ESCAPES)
    return format_html(
        '<div id="{}" class="mo-chart" data-config="{}"{}></div>'
        '<script type="application/json" id="{}-figure">{}</script>',
        div_id,
        json.dumps(config if config is not None else PLOT_CONFIG),
        mark_safe(" data-follow-links") if follow_links else "",
        div_id,
        mark_safe(figure_json),  # noqa: S308 - JSON with <, >, & escaped above
    )


def events_url(
    *, account_id: int, start, end, meter_id: int | None = None, base: str | None = None
) -> str:
    """The raw events changelist filtered to the account (and meter) and a UTC interval."""
    query = {"account__id__exact": account_id}
    if meter_id is not None:
        query["meter__id__exact"] = meter_id
    query["occurred_at__gte"] = start.isoformat()
    query["occurred_at__lt"] = end.isoformat()
    return f"{base or reverse('admin:metering_usageevent_changelist')}?{urlencode(query)}"


def _parse_breakdown(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    meter_code, _, dimension = value.partition(":")
    return meter_code or None, dimension or None


def _figure_html(fig, *, div_id: str, include_js=None, post_script: str | None = None):
    # `include_js` is ignored: the page loads plotly.js once (charts_js.html).
    return figure_html(fig, div_id=div_id, follow_links=post_script == CLICK_TO_EVENTS_JS)


def _period_text(first: date, last: date) -> str:
    if first.year == last.year:
        return f"{first:%-d %b} – {last:%-d %b %Y}"
    return f"{first:%-d %b %Y} – {last:%-d %b %Y}"


def _figures(data: AccountUsageDashboard) -> dict:
    account = data.account
    current = data.periods.current
    base = reverse("admin:metering_usageevent_changelist")
    # One link per meter and day (a few hundred): the day part is encoded once per day.
    day_parts = {
        day: urlencode({"occurred_at__gte": start.isoformat(), "occurred_at__lt": end.isoformat()})
        for day, (start, end) in data.day_bounds.items()
        if day <= data.today
    }
    day_links = {}
    for panel in data.panels:
        prefix = f"{base}?account__id__exact={account.pk}&meter__id__exact={panel.meter.pk}&"
        day_links[panel.meter.pk] = {day: prefix + part for day, part in day_parts.items()}
    zone = account.timezone
    period = _period_text(current.first, current.last)
    figures = {}
    if not data.panels:
        return figures
    figures["daily"] = figure_html(
        charts.daily_usage_figure(
            data.panels,
            title=f"Usage per day, {period} ({zone}) against the previous period",
            day_links=day_links,
        ),
        div_id="usage-daily",
        follow_links=True,
    )
    if data.breakdown is not None:
        b = data.breakdown
        figures["breakdown"] = figure_html(
            charts.breakdown_figure(
                b,
                title=f"{b.meter.name or b.meter.code} by {b.dimension}, {period} ({zone})",
            ),
            div_id="usage-breakdown",
        )
    figures["cumulative"] = figure_html(
        charts.cumulative_figure(
            data.panels, title=f"Usage to date this period, {period} ({zone})"
        ),
        div_id="usage-cumulative",
    )
    return figures


def _totals(data: AccountUsageDashboard) -> list[dict]:
    rows = []
    for panel in [*data.panels, *data.other_meters]:
        rows.append(
            {
                "meter": panel.meter,
                "meter_url": reverse("admin:metering_meter_change", args=[panel.meter.pk]),
                "unit": charts.unit_label(panel),
                "aggregation": panel.meter.get_aggregation_display(),
                "current": charts.decimal_text(panel.current_total),
                "previous": charts.decimal_text(panel.previous_total),
                "included": None
                if panel.included_units is None
                else charts.decimal_text(panel.included_units),
                "limit": None if panel.limit is None else charts.decimal_text(panel.limit),
                "share": panel.share_of_cap,
                "over": panel.cap is not None
                and panel.current_total is not None
                and panel.current_total > panel.cap,
            }
        )
    return rows


def _recent(data: AccountUsageDashboard) -> list[dict]:
    from metering import periods

    base = reverse("admin:metering_usageevent_changelist")
    rows = []
    for event in data.recent_events:
        start, end = periods.day_bounds_utc(event.local_day, data.account.timezone)
        transaction_id = event.transaction_id
        rows.append(
            {
                # Formatted here: 20 rows of template date filters cost more than the rest
                # of the page's template.
                "event": event,
                "occurred": event.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
                "day": f"{event.local_day:%a %-d %b}",
                "transaction": transaction_id
                if len(transaction_id) <= 40
                else f"{transaction_id[:39]}…",
                "value": charts.decimal_text(event.value)
                if event.value is not None
                else event.unique_value,
                "url": reverse("admin:metering_usageevent_change", args=[event.id]),
                "day_url": events_url(
                    account_id=data.account.pk,
                    start=start,
                    end=end,
                    meter_id=event.meter_id,
                    base=base,
                ),
            }
        )
    return rows


def account_usage_view(request, *, account_id: int, model_admin):
    """Any staff user who may view accounts (Support, Manager, Auditor); 403 otherwise."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    account = get_object_or_404(Account, pk=account_id)
    meter_code, dimension = _parse_breakdown(request.GET.get("breakdown"))
    data = account_usage_dashboard(account=account, meter_code=meter_code, dimension=dimension)
    current, previous = data.periods.current, data.periods.previous
    day_number = (min(data.today, current.last) - current.first).days + 1
    events_all = (
        f"{reverse('admin:metering_usageevent_changelist')}?"
        f"{urlencode({'account__id__exact': account.pk})}"
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Account._meta,
        "title": f"Usage of {account}",
        "subtitle": None,
        "account": account,
        "data": data,
        "periods": data.periods,
        "period_text": _period_text(current.first, current.last),
        "previous_text": _period_text(previous.first, previous.last),
        "period_length": (current.end - current.first).days,
        "day_number": day_number,
        "figures": _figures(data),
        "totals": _totals(data),
        "recent": _recent(data),
        "events_all_url": events_all,
        "change_url": reverse("admin:metering_account_change", args=[account.pk]),
        "breakdown_value": f"{data.breakdown.meter.code}:{data.breakdown.dimension}"
        if data.breakdown
        else "",
        "has_view_permission": True,
        # The charts want the page's full width.
        "is_nav_sidebar_enabled": False,
        "dimension_cap": settings.ROLLUP_MAX_DIMENSION_VALUES,
        "recent_limit": RECENT_EVENTS,
    }
    template = getattr(model_admin, "usage_template", TEMPLATE)
    return TemplateResponse(request, template, context)


def usage_link(account: Account) -> str:
    """A link to the account's usage page (for readonly fields and lists)."""
    url = reverse("admin:metering_account_usage", args=[account.pk])
    return format_html('<a href="{}">Usage dashboard</a>', url)
