"""The projected-invoice panel in the admin, and the read-only list of daily snapshots.

The panel lives at /admin/billing/projectionsnapshot/account/<account id>/ (URL name
`admin:billing_projection_panel`): the open period's lines with their explanations, the totals
against the previous period, and a chart of how the projection moved (one snapshot a day).
With `?embed=1` it renders without the admin's chrome, so a page that shows an account's usage
can frame it (same-origin iframe, templates/admin/billing/projection/usage_include.html).

Who may see it: anyone who may view subscriptions or accounts (Support, Manager, Auditor).
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode
from django.views.decorators.clickjacking import xframe_options_sameorigin

from billing.charts import ProjectionPoint, projection_history_figure
from billing.explain import short_date
from billing.models import ProjectionSnapshot
from billing.money import format_amount, format_money
from billing.pricing import format_quantity
from billing.projection import ProjectedInvoice, ProjectionUnavailable, projected_invoice_build
from metering.account_holds import account_hold
from metering.admin import ReadOnlyModelAdmin
from metering.models import Account

PANEL_TEMPLATE = "admin/billing/projection/panel.html"
EMBED_TEMPLATE = "admin/billing/projection/embed.html"
VIEW_PERMISSIONS = ("billing.view_subscription", "metering.view_account")
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def may_view_projection(user) -> bool:
    return user.is_active and user.is_staff and any(user.has_perm(p) for p in VIEW_PERMISSIONS)


def _figure_html(figure: dict, *, div_id: str, config: dict) -> str:
    # The usage page's figure placeholder (plotly.js is loaded once by the page, see
    # templates/admin/metering/charts_js.html). Imported here, at call time, to keep the admin
    # import graph flat.
    from metering.admin_dashboard import figure_html

    return figure_html(figure, div_id=div_id, config=config)


def projection_snapshots(*, account: Account, period_id: int) -> list[ProjectionSnapshot]:
    """The period's snapshots, oldest first (one query)."""
    return list(
        ProjectionSnapshot.objects.filter(account=account, period_id=period_id)
        .only("taken_on", "to_date_total_minor", "projected_total_minor")
        .order_by("taken_on")
    )


def _chart_html(invoice: ProjectedInvoice, snapshots: list[ProjectionSnapshot]) -> str:
    figure = projection_history_figure(
        points=[
            ProjectionPoint(
                day=s.taken_on,
                to_date_minor=s.to_date_total_minor,
                projected_minor=s.projected_total_minor,
            )
            for s in snapshots
        ],
        currency=invoice.currency,
        period_start=invoice.period_start,
        last_day=invoice.last_day,
        previous_total_minor=invoice.previous.total_minor if invoice.previous else None,
        minimum_commitment_minor=invoice.minimum_commitment_minor,
        live=ProjectionPoint(
            day=invoice.on,
            to_date_minor=invoice.to_date_total_minor,
            projected_minor=invoice.projected_total_minor,
        ),
        title=(
            f"Projected invoice, day by day ({short_date(invoice.period_start)} – "
            f"{short_date(invoice.last_day)}, {invoice.timezone})"
        ),
    )
    return _figure_html(figure, div_id="projection-history", config=PLOT_CONFIG)


def _tiers_text(tiers, currency: str) -> str:
    return "; ".join(
        f"tier {t.index + 1}: {format_quantity(t.units)} × {format_amount(t.unit_price, currency)}"
        for t in tiers
    )


def _quantity(value) -> str:
    return "" if value is None else format_quantity(value)


def _line_rows(invoice: ProjectedInvoice) -> list[dict]:
    cur = invoice.currency
    rows = []
    for line in invoice.lines:
        rows.append(
            {
                "line": line,
                "units_to_date": _quantity(line.units_to_date),
                "forecast_units": _quantity(line.forecast_units),
                "included": _quantity(line.included_units) if line.included_units else "",
                "tiers_to_date": _tiers_text(line.tiers_to_date, cur),
                "tiers_projected": _tiers_text(line.tiers_projected, cur),
                "to_date": format_money(line.amount_to_date_minor, cur),
                "projected": format_money(line.projected_amount_minor, cur),
            }
        )
    return rows


def projection_panel_context(*, account: Account) -> dict:
    """Everything the panel template shows (the chart as HTML)."""
    # A billing hold (alerts', through metering's registry): the usage below is counted but
    # not pushed to the provider until a Manager releases it.
    hold = account_hold(account.pk)
    try:
        invoice = projected_invoice_build(account=account)
    except ProjectionUnavailable as exc:
        return {
            "account": account,
            "unavailable": exc.message,
            "unavailable_code": exc.code,
            "billing_hold": hold,
        }
    cur = invoice.currency
    snapshots = projection_snapshots(account=account, period_id=invoice.period_id)
    previous = invoice.previous
    change = None
    if invoice.change_minor is not None:
        sign = "+" if invoice.change_minor > 0 else ""
        change = f"{sign}{format_money(invoice.change_minor, cur)}"
        if invoice.change_percent is not None:
            change += f" ({sign}{invoice.change_percent}%)"
    snapshot_list = reverse("admin:billing_projectionsnapshot_changelist")
    return {
        "account": account,
        "billing_hold": hold,
        "invoice": invoice,
        "rows": _line_rows(invoice),
        "to_date_total": format_money(invoice.to_date_total_minor, cur),
        "projected_total": format_money(invoice.projected_total_minor, cur),
        "previous_total": format_money(previous.total_minor, cur) if previous else None,
        "previous_source": (
            "invoiced" if previous and previous.source == "invoiced" else "not invoiced yet"
        ),
        "change": change,
        "change_up": bool(invoice.change_minor and invoice.change_minor > 0),
        "period_text": f"{short_date(invoice.period_start)} – {short_date(invoice.last_day)}",
        "snapshot_count": len(snapshots),
        "snapshots_url": f"{snapshot_list}?{urlencode({'account__id__exact': account.pk})}",
        "chart": _chart_html(invoice, snapshots),
    }


@admin.register(ProjectionSnapshot)
class ProjectionSnapshotAdmin(ReadOnlyModelAdmin):
    """Daily snapshots, read-only (written by the daily task), and the panel's URL."""

    list_display = ("account", "taken_on", "to_date_total", "projected_total", "computed_at")
    list_select_related = ("account", "period")
    list_filter = ("taken_on",)
    search_fields = ("account__external_id", "account__name")
    date_hierarchy = "taken_on"
    ordering = ("-taken_on", "account")
    show_full_result_count = False
    readonly_fields = (
        "account",
        "period",
        "taken_on",
        "currency",
        "to_date_total_minor",
        "projected_total_minor",
        "lines",
        "computed_at",
        "created_at",
    )

    @admin.display(description="Total so far", ordering="to_date_total_minor")
    def to_date_total(self, obj: ProjectionSnapshot) -> str:
        return format_money(obj.to_date_total_minor, obj.currency)

    @admin.display(description="Projected total", ordering="projected_total_minor")
    def projected_total(self, obj: ProjectionSnapshot) -> str:
        return format_money(obj.projected_total_minor, obj.currency)

    def get_urls(self):
        panel = self.admin_site.admin_view(xframe_options_sameorigin(self.panel_view))
        return [
            path("account/<int:account_id>/", panel, name="billing_projection_panel"),
            *super().get_urls(),
        ]

    def panel_view(self, request, account_id: int):
        if not may_view_projection(request.user):
            raise PermissionDenied
        account = get_object_or_404(Account, pk=account_id)
        context = projection_panel_context(account=account)
        embed = request.GET.get("embed") == "1"
        context.update(
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": f"Projected invoice of {account}",
                "subtitle": None,
                "embed": embed,
                # The chart wants the page's full width.
                "is_nav_sidebar_enabled": False,
                "account_url": reverse("admin:metering_account_change", args=[account.pk]),
            }
        )
        return TemplateResponse(request, EMBED_TEMPLATE if embed else PANEL_TEMPLATE, context)
