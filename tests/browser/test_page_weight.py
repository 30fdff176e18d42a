"""What the account usage page costs a browser on a cold cache, served as `make run` serves it.

A separate `manage.py runserver` on the test database with the static files collected
(STATIC_COLLECTED: hashed names, gzip copies, WhiteNoise), so the transfer sizes are the real
ones; pytest-django's live server would send every static file uncompressed. Timings from the
Navigation Timing and Paint Timing APIs are printed (`pytest -s`), never asserted: they depend on
the machine. What is asserted: plotly.js is the partial bundle, sent once and compressed,
cacheable for a year, and the charts draw.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth.models import Group
from django.db import connection

from tests.browser.test_usage_page import _seed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "support-weight-9"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """A runserver on the test database with collected, compressed static files."""
    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(
        DEBUG="true",
        STATIC_COLLECTED="true",
        STATIC_ROOT=str(tmp_path / "static"),
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
    )
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert collected.returncode == 0, collected.stderr
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("runserver did not answer /healthz within 60 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


NAVIGATION_TIMING = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = Object.fromEntries(
    performance.getEntriesByType('paint').map(p => [p.name, p.startTime]));
  const resources = performance.getEntriesByType('resource').map(r => ({
    name: r.name, transfer: r.transferSize, encoded: r.encodedBodySize,
    decoded: r.decodedBodySize}));
  return {
    html_transfer: nav.transferSize, html_decoded: nav.decodedBodySize,
    ttfb: nav.responseStart, dom_content_loaded: nav.domContentLoadedEventEnd,
    load: nav.loadEventEnd, fcp: paint['first-contentful-paint'] ?? null,
    resources,
  };
}"""


def test_usage_page_on_a_cold_cache_sends_one_compressed_partial_plotly(
    served, browser, output_dir, django_user_model
):
    account = _seed()
    user = django_user_model.objects.create_user(username="wes", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))

    # Log in in one context, measure in a fresh one: its HTTP cache is empty.
    login = browser.new_context(viewport={"width": 1400, "height": 900})
    page = login.new_page()
    page.goto(f"{served}/admin/login/")
    page.fill("#id_username", "wes")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{served}/admin/")
    state = login.storage_state()
    login.close()

    context = browser.new_context(viewport={"width": 1400, "height": 900}, storage_state=state)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{served}/admin/metering/account/{account.pk}/usage/", wait_until="load")
    page.wait_for_selector("#usage-cumulative .main-svg")
    timing = page.evaluate(NAVIGATION_TIMING)
    page.screenshot(path=str(output_dir / "usage_page_cold.png"))

    resources = timing["resources"]
    print()
    print(f"usage page, cold cache, {served} (runserver, collected static files)")
    print(
        f"  HTML: {timing['html_transfer'] / 1024:.1f} KB transferred "
        f"({timing['html_decoded'] / 1024:.1f} KB decoded)"
    )
    for r in sorted(resources, key=lambda r: -r["transfer"]):
        print(
            f"  {r['transfer'] / 1024:8.1f} KB transferred {r['decoded'] / 1024:8.1f} KB decoded"
            f"  {r['name'].removeprefix(served)}"
        )
    total = timing["html_transfer"] + sum(r["transfer"] for r in resources)
    print(f"  total transferred: {total / 1024:.1f} KB in {len(resources) + 1} responses")
    print(
        f"  TTFB {timing['ttfb']:.0f} ms, first contentful paint {timing['fcp']:.0f} ms, "
        f"DOMContentLoaded {timing['dom_content_loaded']:.0f} ms, load {timing['load']:.0f} ms"
    )
    context.close()

    plotly = [r for r in resources if "plotly" in r["name"]]
    assert len(plotly) == 1, [r["name"] for r in resources]
    bundle = plotly[0]
    assert "/plotly-basic-4.1.1.min." in bundle["name"]
    # Sent compressed: a third of its 1.2 MB (the full bundle was 4.8 MB, uncompressed).
    assert bundle["decoded"] > 1_000_000 and bundle["transfer"] < bundle["decoded"] / 2
    # Every static file is sent compressed.
    for r in resources:
        if "/static/" in r["name"] and r["decoded"] > 2000:
            assert r["transfer"] < r["decoded"], r
    # Hashed name, cached for a year.
    cached = httpx.head(bundle["name"], headers={"Accept-Encoding": "gzip"})
    assert "immutable" in cached.headers["cache-control"]
    assert cached.headers.get("content-encoding") == "gzip"
    assert timing["fcp"] is not None and timing["load"] > 0
    assert errors == []
