"""A chunked request body (Transfer-Encoding: chunked, no Content-Length) is read, under gunicorn.

Django sizes the body by CONTENT_LENGTH, so without one it reads nothing: a chunked batch looked
empty. These tests run the real server: gunicorn in a subprocess on a free loopback port, on the
test database, driven by http.client with encode_chunked=True.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from config.chunked_requests import ReadChunkedBody
from metering.models import Account, UsageEvent
from tests.metering.factories import AccountFactory, MeterFactory, api_key_for

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 4096
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn_url(django_db_setup, django_db_blocker):
    """gunicorn serving config.wsgi on the test database; stopped (killed if need be) at the end."""
    with django_db_blocker.unblock():
        db = connection.settings_dict
    port = _free_port()
    env = {
        **os.environ,
        "DEBUG": "true",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "DB_CONN_MAX_AGE": "0",  # no idle connection left behind when the test database is dropped
        "INGEST_MAX_BODY_BYTES": str(MAX_BODY),
        "CACHE_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--timeout",
            "30",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(f"gunicorn exited: {server.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("gunicorn did not start listening in time")
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        server.stderr.close()


def _send_chunked(port: int, method: str, path: str, raw_key: str, body: bytes):
    def chunks():
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            method,
            path,
            body=chunks(),
            headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _batch(count: int, pad: int = 0) -> bytes:
    events = [
        {
            "transaction_id": f"chunked-{i}",
            "external_customer_id": "acme",
            "code": "api_calls",
            "timestamp": "2026-11-21T10:00:00Z",
            "properties": {"pad": "x" * pad},
        }
        for i in range(count)
    ]
    return json.dumps({"events": events}).encode()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_batch_without_content_length_is_read_and_stored(gunicorn_url):
    AccountFactory(external_id="acme")
    MeterFactory(code="api_calls")
    _, raw = api_key_for(["ingest"])
    body = _batch(10)
    assert 1000 < len(body) < MAX_BODY  # several chunks, under the limit

    status, answer = _send_chunked(gunicorn_url, "POST", "/api/v1/events/batch", raw, body)

    assert status == 200, answer
    assert answer["accepted"] == 10
    assert UsageEvent.objects.filter(transaction_id__startswith="chunked-").count() == 10


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(gunicorn_url):
    AccountFactory(external_id="acme")
    MeterFactory(code="api_calls")
    _, raw = api_key_for(["ingest"])
    body = _batch(10, pad=500)
    assert len(body) > MAX_BODY

    status, answer = _send_chunked(gunicorn_url, "POST", "/api/v1/events/batch", raw, body)

    assert status == 413, answer
    assert answer["code"] == "body_too_large"
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_chunked_account_upsert_keeps_the_fields_it_was_sent(gunicorn_url):
    _, raw = api_key_for(["manage"])
    body = json.dumps({"name": "Acme Inc", "timezone": "Asia/Kolkata"}).encode()

    status, answer = _send_chunked(gunicorn_url, "PUT", "/api/v1/accounts/acme", raw, body)

    assert status == 201, answer
    account = Account.objects.get(external_id="acme")
    assert (account.name, account.timezone) == ("Acme Inc", "Asia/Kolkata")


def _wsgi_call(environ: dict) -> dict:
    seen = {}

    def app(env, start_response):
        seen.update(env, body=env["wsgi.input"].read())
        return [b""]

    ReadChunkedBody(app)(environ, lambda *a: None)
    return seen


def test_a_chunked_body_over_the_cap_is_cut_one_byte_past_it_and_declared_at_that_length(
    settings,
):
    settings.INGEST_MAX_BODY_BYTES = 10
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 20
    environ = {
        "wsgi.input_terminated": True,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(b"x" * 1000),
    }

    seen = _wsgi_call(environ)

    assert seen["CONTENT_LENGTH"] == "21"
    assert seen["body"] == b"x" * 21


def test_without_input_terminated_a_chunked_body_is_left_alone():
    # Reading to the end of an unterminated input could block: Django's behaviour is kept.
    stream = io.BytesIO(b"{}")
    environ = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": stream}

    seen = _wsgi_call(environ)

    assert "CONTENT_LENGTH" not in seen
    assert seen["wsgi.input"] is stream
