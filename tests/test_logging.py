"""A refused request is logged once, in one line, without a traceback."""

from __future__ import annotations

import logging

import pytest

from config.log_filters import RefusedRequestWithoutTraceback


def _console_handler() -> logging.Handler:
    handlers = [
        h
        for h in logging.getLogger().handlers
        if any(isinstance(f, RefusedRequestWithoutTraceback) for f in h.filters)
    ]
    assert len(handlers) == 1
    return handlers[0]


def _printed(caplog) -> list[str]:
    """What the configured console handler prints for the captured records."""
    handler = _console_handler()
    return [handler.format(r) for r in caplog.records if handler.filter(r)]


@pytest.mark.django_db
def test_disallowed_host_is_one_line_without_traceback(client, caplog):
    caplog.set_level(logging.INFO)

    response = client.get("/healthz", HTTP_HOST="evil.example.com")

    assert response.status_code == 400
    printed = _printed(caplog)
    assert len(printed) == 1, printed
    assert "Invalid HTTP_HOST header: 'evil.example.com'" in printed[0]
    assert "Traceback" not in printed[0]


@pytest.mark.django_db
def test_permission_denied_is_one_line_without_traceback(client, caplog, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="x-9-long-pw", is_staff=True)
    client.force_login(user)
    caplog.set_level(logging.INFO)

    response = client.get("/admin/metering/account/1/usage/")

    assert response.status_code == 403
    printed = _printed(caplog)
    assert len(printed) == 1, printed
    assert "Forbidden (Permission denied): /admin/metering/account/1/usage/" in printed[0]
    assert "Traceback" not in printed[0]


def test_django_records_reach_one_handler_only():
    # Django's DEFAULT_LOGGING gives the "django" logger a console handler of its own, which
    # printed every record twice next to the root's.
    assert logging.getLogger("django").handlers == []
    assert logging.getLogger("django").propagate


def test_server_errors_keep_their_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "django.request",
            logging.ERROR,
            __file__,
            1,
            "Internal Server Error",
            (),
            sys.exc_info(),
        )
    record.status_code = 500
    assert RefusedRequestWithoutTraceback().filter(record)
    assert "Traceback" in _console_handler().format(record)
