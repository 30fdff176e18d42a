"""Browser tests: Debian's Chromium driven by Playwright against pytest-django's live server.

Playwright's sync API runs an event loop in the test's thread, which trips Django's "you cannot
call this from an async context" check on every ORM call the test makes; the test thread is not
serving requests, so allowing it is safe here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.db import connections

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Screenshots and other artefacts (git-ignored).
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output" / "browser"


@pytest.fixture
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # ORM calls made while Playwright's loop runs get their own connection (Django's
            # connections are per context); close it, or dropping the test database fails.
            connections.close_all()


@pytest.fixture
def page(browser):
    """A page that records JavaScript errors: uncaught exceptions and console errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # The browser asks for /favicon.ico on its own; the project has none, and that 404 is not
    # an error of the page under test.
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204, body=""))
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(f"pageerror: {error}"))
    page.on(
        "console",
        lambda message: (
            page.js_errors.append(f"console.{message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()
