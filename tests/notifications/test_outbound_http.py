"""The exchange with a receiver is bounded in total, not only per read: a receiver that trickles
its answer cannot hold a worker (and so outlive the delivery's claim)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from notifications import outbound_http
from notifications.outbound_http import post_checked, url_check


@pytest.fixture
def trickling_server():
    """Accepts, then sends a valid status line and headers one byte every 0.2 s, forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                    if stop.is_set():
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                    time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_a_trickling_receiver_is_cut_off_at_the_total_timeout(
    trickling_server, settings, monkeypatch
):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    monkeypatch.setattr(outbound_http, "TOTAL_TIMEOUT_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        post_checked(url_check(trickling_server), content=b"{}", headers={})
    # Each byte arrives well inside the per-read timeout; only the total deadline stops it.
    assert time.monotonic() - started < 2.0
