"""Where webhooks may go: in production (WEBHOOK_ALLOW_PRIVATE off) only https to public
addresses, checked when an endpoint is saved and again before every send; the send connects to
the address it checked."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest
from django.core.exceptions import ValidationError

from notifications import outbound_http
from notifications.models import WebhookAttempt, WebhookDelivery
from notifications.outbound_http import UrlRefused, url_check
from notifications.services import (
    webhook_deliveries_dispatch,
    webhook_endpoint_upsert,
    webhook_enqueue,
)
from tests.notifications.receiver import WebhookReceiver

pytestmark = pytest.mark.django_db

PUBLIC_V4 = "93.184.216.34"


def _resolving_to(monkeypatch, *addresses: str) -> None:
    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


@pytest.fixture
def production(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    return settings


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
    ],
)
def test_a_host_resolving_to_a_non_public_address_is_refused_in_production(
    production, monkeypatch, address
):
    _resolving_to(monkeypatch, address)
    with pytest.raises(UrlRefused, match="public addresses only"):
        url_check("https://hooks.example.com/in")


def test_one_private_address_among_public_ones_is_enough_to_refuse(production, monkeypatch):
    _resolving_to(monkeypatch, PUBLIC_V4, "10.0.0.1")
    with pytest.raises(UrlRefused):
        url_check("https://hooks.example.com/in")


def test_a_public_https_url_is_accepted_and_its_address_kept(production, monkeypatch):
    _resolving_to(monkeypatch, PUBLIC_V4, "2606:2800:220:1::1")
    checked = url_check("https://hooks.example.com:8443/in")
    assert (checked.host, checked.address) == ("hooks.example.com", PUBLIC_V4)


def test_production_refuses_plain_http_and_credentials_in_the_url(production, monkeypatch):
    _resolving_to(monkeypatch, PUBLIC_V4)
    with pytest.raises(UrlRefused, match="https"):
        url_check("http://hooks.example.com/in")
    with pytest.raises(UrlRefused, match="password"):
        url_check("https://user:pw@hooks.example.com/in")


def test_saving_an_endpoint_on_a_private_address_is_refused_in_production(production, receiver):
    with pytest.raises(ValidationError) as exc:
        webhook_endpoint_upsert(
            owner_key="account:1",
            name="main",
            url="https://127.0.0.1/hook",
            event_types=["usage.spike"],
            enabled=True,
        )
    assert "url" in exc.value.message_dict
    with pytest.raises(ValidationError):
        webhook_endpoint_upsert(
            owner_key="account:1",
            name="main",
            url=receiver.url,
            event_types=["usage.spike"],
            enabled=True,
        )


def test_the_address_is_checked_again_at_send_time(settings, receiver):
    # Saved while allowed (say the name pointed elsewhere then); by send time it is refused.
    _endpoint, _secret, _ = webhook_endpoint_upsert(
        owner_key="account:1",
        name="main",
        url=receiver.url,
        event_types=["usage.spike"],
        enabled=True,
    )
    (delivery,) = webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )
    settings.WEBHOOK_ALLOW_PRIVATE = False

    assert webhook_deliveries_dispatch() == 1

    assert receiver.requests == []
    attempt = delivery.attempts.get()
    assert attempt.outcome == WebhookAttempt.Outcome.REFUSED
    assert "https" in attempt.response_excerpt
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING


def test_the_send_connects_to_the_checked_address_with_the_name_in_the_host_header(
    receiver, monkeypatch
):
    # "hooks.invalid" resolves nowhere for real: the request can only arrive because the
    # sender connected to the address the check resolved, not by resolving the name again.
    _resolving_to(monkeypatch, "127.0.0.1")
    url = f"http://hooks.invalid:{receiver.port}/hook"
    _endpoint, secret, _ = webhook_endpoint_upsert(
        owner_key="account:1", name="main", url=url, event_types=["usage.spike"], enabled=True
    )
    receiver.secrets.append(secret)
    webhook_enqueue(
        owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
    )

    assert webhook_deliveries_dispatch() == 1

    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.invalid:{receiver.port}"
    assert request.verified == [True]


def test_https_connects_to_the_checked_address_with_the_name_in_sni_and_verifies_its_certificate(
    monkeypatch, tmp_path
):
    """The DNS-rebinding defence over TLS: the socket goes to the checked address, while the
    TLS handshake names the host (SNI) and the certificate is verified for that name."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=hooks.test",
            "-addext", "subjectAltName=DNS:hooks.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setattr(
        outbound_http, "tls_context", lambda: ssl.create_default_context(cafile=str(cert))
    )
    _resolving_to(monkeypatch, "127.0.0.1")
    with WebhookReceiver(tls_context=server_tls) as receiver:
        url = f"https://hooks.test:{receiver.port}/hook"
        _endpoint, secret, _ = webhook_endpoint_upsert(
            owner_key="account:1", name="tls", url=url, event_types=["usage.spike"], enabled=True
        )
        receiver.secrets.append(secret)
        (delivery,) = webhook_enqueue(
            owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
        )
        assert webhook_deliveries_dispatch() == 1

    assert receiver.server_names == ["hooks.test"]
    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.test:{receiver.port}"
    assert request.verified == [True]
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED


def test_https_refuses_a_certificate_for_another_name(monkeypatch, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=other.test",
            "-addext", "subjectAltName=DNS:other.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setattr(
        outbound_http, "tls_context", lambda: ssl.create_default_context(cafile=str(cert))
    )
    _resolving_to(monkeypatch, "127.0.0.1")
    with WebhookReceiver(tls_context=server_tls) as receiver:
        webhook_endpoint_upsert(
            owner_key="account:1",
            name="tls",
            url=f"https://hooks.test:{receiver.port}/hook",
            event_types=["usage.spike"],
            enabled=True,
        )
        (delivery,) = webhook_enqueue(
            owner_key="account:1", event_type="usage.spike", payload={}, idempotency_key="k"
        )
        webhook_deliveries_dispatch()
    assert receiver.requests == []
    attempt = delivery.attempts.get()
    assert attempt.outcome == WebhookAttempt.Outcome.NETWORK_ERROR
    assert "certificate" in attempt.response_excerpt.lower()
