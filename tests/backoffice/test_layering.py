"""Imports flow one way (notifications <- metering <- billing <- alerts, reconciliation <-
adjustments <- backoffice): a lower app never names a higher one, not in code, templates, URLs
or permission strings. Pages that span apps live in backoffice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]
ORDER = [
    "notifications",
    "metering",
    "billing",
    "alerts",
    "reconciliation",
    "adjustments",
    "backoffice",
]
# An import, a dotted/colon/slash reference in a string, or a template path of a higher app.
PATTERN = r"(from|import) ({names})\b|['\"]({names})[.:/]|admin/({names})/"


def _files(app: str) -> list[Path]:
    found = []
    for base in (ROOT / app, ROOT / "templates" / "admin" / app):
        if base.exists():
            found += [
                p
                for p in base.rglob("*")
                if p.suffix in {".py", ".html"} and "migrations" not in p.parts
            ]
    return found


@pytest.mark.parametrize("app", ORDER[:-1])
def test_an_app_names_no_app_above_it(app):
    above = ORDER[ORDER.index(app) + 1 :]
    # alerts and reconciliation sit side by side; neither is above the other.
    if app in {"alerts", "reconciliation"}:
        above = [a for a in above if a not in {"alerts", "reconciliation"}]
    pattern = re.compile(PATTERN.format(names="|".join(above)))
    offending = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _files(app)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offending == []


@pytest.mark.django_db
def test_the_account_hub_shows_the_projected_invoice_on_the_usage_page(admin_client):
    from tests.metering.factories import AccountFactory

    account = AccountFactory()
    usage = admin_client.get(reverse("admin:metering_account_usage", args=[account.pk]))
    panel = reverse("admin:billing_projection_panel", args=[account.pk])

    assert usage.status_code == 200
    assert f'src="{panel}?embed=1"'.encode() in usage.content
    page = admin_client.get(reverse("admin:metering_account_change", args=[account.pk]))
    assert panel.encode() in page.content
    assert b"usage-dashboard-link" in page.content
