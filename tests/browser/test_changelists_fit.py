"""Every admin changelist a Support agent may open fits 1400 px with the sidebar open.

Every model registered in the admin gets a row first (tests/browser/seed_rows.py: identifiers as
long as real ones, amounts in the millions), so no table passes by being empty. A table wider
than its content area (the admin scrolls it sideways, so its last columns are cut off) fails
the test; each page's screenshot is saved under test-output/browser/changelists/.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse

from tests.browser.seed_rows import fill_every_admin_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "support-fit-9"
WIDTHS = """() => {
  const table = document.querySelector('#result_list');
  const results = document.querySelector('#changelist .results');
  const content = document.querySelector('#content');
  const sidebar = document.querySelector('#nav-sidebar');
  return {
    rows: document.querySelectorAll('#result_list tbody tr').length,
    table: table ? Math.ceil(table.getBoundingClientRect().width) : null,
    area: results ? results.clientWidth : null,
    tableRight: table ? table.getBoundingClientRect().right : null,
    contentRight: content.getBoundingClientRect().right,
    page: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
    sidebarOpen: !!sidebar && sidebar.getBoundingClientRect().width > 100,
  };
}"""


def test_every_changelist_support_may_view_fits_the_content_area(
    live_server, page, output_dir, django_user_model
):
    failed_seeds = fill_every_admin_model()
    assert failed_seeds == {}
    user = django_user_model.objects.create_user(username="sue", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))
    shots = output_dir / "changelists"
    shots.mkdir(exist_ok=True)

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "sue")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")

    opened, too_wide = [], []
    for model in admin.site._registry:
        opts = model._meta
        if not user.has_perm(f"{opts.app_label}.view_{opts.model_name}"):
            continue
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        response = page.goto(f"{live_server.url}{url}")
        assert response.status, url
        assert response.status == 200, (url, response.status)
        size = page.evaluate(WIDTHS)
        page.screenshot(path=str(shots / f"{opts.app_label}_{opts.model_name}.png"))
        opened.append(opts.label)
        assert size["sidebarOpen"], url
        assert size["rows"] >= 1, f"{url}: the table is empty, nothing was measured"
        if (
            size["table"] > size["area"]
            or size["tableRight"] > size["contentRight"] + 1
            or size["page"] > size["viewport"]
        ):
            too_wide.append(f"{url}: table {size['table']} px in {size['area']} px")

    print(f"\n{len(opened)} changelists opened as Support: {', '.join(opened)}")
    assert len(opened) >= 20
    assert too_wide == [], "\n".join(too_wide)
    assert page.js_errors == []
