"""The support agent's account usage page in the admin: /admin/metering/account/<id>/usage/.

Wired into AccountAdmin through `account_usage_urls` (AccountAdmin.get_urls); the template is
the admin's `usage_template`, so an admin built on AccountAdmin can render a page that extends
this one (its `projected_invoice` block is left empty here). The data comes from
metering.dashboard_selectors (rollups plus a bounded number of rows), the figures from
metering.charts, and plotly.js from the installed plotly package, served by this module (no CDN:
admins may have no internet access, and the version always matches the Python package).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import plotly
import plotly.io as pio
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

from metering import charts
from metering.dashboard_selectors import (
    RECENT_EVENTS,
    AccountUsageDashboard,
    account_usage_dashboard,
)
from metering.models import Account

TEMPLATE = "admin/metering/account/usage.html"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

# Follows a bar's link (its customdata) when the bar is clicked; `{plot_id}` is filled by plotly.
CLICK_TO_EVENTS_JS = """
var gd = document.getElementById('{plot_id}');
gd.on('plotly_click', function (data) {
  var point = data && data.points && data.points[0];
  var url = point && point.customdata;
  if (typeof url === 'string' && url) { window.location.assign(url); }
});
"""
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
        path(
            "usage/plotly-<str:version>.min.js",
            site.admin_view(plotly_js_view, cacheable=True),
            name="metering_account_usage_plotlyjs",
        ),
    ]


def plotly_js_view(request, version: str):
    response = FileResponse(PLOTLY_JS.open("rb"), content_type="text/javascript")
    # The URL carries plotly's version, so a new version is a new URL (any version in the URL
    # is served the installed file: an old page still gets a working plotly.js).
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


def plotly_js_url() -> str:
    # plotly's to_html references a script URL only when the string ends in ".js".
    return reverse("admin:metering_account_usage_plotlyjs", args=[plotly.__version__])


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


def _figure_html(fig, *, div_id: str, include_js: str | bool, post_script: str | None = None):
    return mark_safe(  # noqa: S308 - plotly's own HTML for a figure we built
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=include_js,
            div_id=div_id,
            config=PLOT_CONFIG,
            post_script=post_script,
            validate=False,
        )
    )


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
    figures["daily"] = _figure_html(
        charts.daily_usage_figure(
            data.panels,
            title=f"Usage per day, {period} ({zone}) against the previous period",
            day_links=day_links,
        ),
        div_id="usage-daily",
        include_js=plotly_js_url(),
        post_script=CLICK_TO_EVENTS_JS,
    )
    if data.breakdown is not None:
        b = data.breakdown
        figures["breakdown"] = _figure_html(
            charts.breakdown_figure(
                b,
                title=f"{b.meter.name or b.meter.code} by {b.dimension}, {period} ({zone})",
            ),
            div_id="usage-breakdown",
            include_js=False,
        )
    figures["cumulative"] = _figure_html(
        charts.cumulative_figure(
            data.panels, title=f"Usage to date this period, {period} ({zone})"
        ),
        div_id="usage-cumulative",
        include_js=False,
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
