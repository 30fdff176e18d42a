"""Outbound HTTP to URLs that customers and operators choose: the URL rules and a POST that
connects to the very address it checked.

Rules (unless settings.WEBHOOK_ALLOW_PRIVATE, which defaults to DEBUG, for development and
tests): the URL is `https`, and every address its host resolves to is public (not private,
loopback, link-local, reserved, multicast, unspecified or shared). The check runs when an
endpoint is saved and again before every send; the send then connects to the checked address
itself (the Host header and TLS SNI, and so certificate verification, carry the name), so a DNS
answer that changes between the check and the connection (DNS rebinding) cannot redirect it.

Timeouts: 5 s to connect and 10 s for the whole exchange (connect, TLS, request, answer): every
socket operation gets what is left of the 10 s, so a receiver that trickles bytes cannot hold a
worker past it (which keeps an attempt well inside its 60 s claim). Only the first 1 KB of the
answer is read (an excerpt is all we keep). Redirects are never followed, and proxies from the
environment are ignored (they would connect elsewhere than the checked address).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

import httpcore
import httpx
from django.conf import settings

CONNECT_TIMEOUT_SECONDS = 5.0
TOTAL_TIMEOUT_SECONDS = 10.0
EXCERPT_BYTES = 1024
USER_AGENT = "Meterops-Webhooks/1.0"


class UrlRefused(Exception):
    """The URL breaks the rules (message says which); nothing was sent."""


@dataclass(frozen=True)
class CheckedUrl:
    url: httpx.URL
    host: str
    # The address the check accepted; "" when the URL was checked without resolving.
    address: str


@dataclass(frozen=True)
class HttpResult:
    status_code: int
    headers: httpx.Headers
    excerpt: str


def _address_refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def url_check(url: str, *, resolve: bool = True) -> CheckedUrl:
    """Apply the URL rules; with `resolve`, resolve the host and keep the address to use.

    Raises UrlRefused. Without WEBHOOK_ALLOW_PRIVATE the host is always resolved, since the
    rule is about addresses."""
    allow_private = settings.WEBHOOK_ALLOW_PRIVATE
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from exc
    if parsed.scheme not in {"https", "http"} or not parsed.host:
        raise UrlRefused("the URL must be an absolute https:// URL")
    if parsed.scheme != "https" and not allow_private:
        raise UrlRefused("the URL must use https")
    if parsed.userinfo:
        raise UrlRefused("the URL must not carry a user name or password")
    if not resolve and allow_private:
        return CheckedUrl(url=parsed, host=parsed.host, address="")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"the host {parsed.host} does not resolve ({exc})") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UrlRefused(f"the host {parsed.host} does not resolve")
    if not allow_private:
        refused = [a for a in addresses if _address_refused(a)]
        if refused:
            raise UrlRefused(
                f"the host {parsed.host} resolves to a private, loopback, link-local or "
                f"reserved address ({refused[0]}); webhooks go to public addresses only"
            )
    return CheckedUrl(url=parsed, host=parsed.host, address=addresses[0])


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation times out at the exchange's deadline at the
    latest (httpx's own timeouts apply per operation, not to the whole exchange)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error(f"the exchange took more than {TOTAL_TIMEOUT_SECONDS:g} s")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        stream = self._inner.start_tls(
            ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("no time left to connect")
        timeout = left if timeout is None else min(timeout, left)
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)


def tls_context():
    """The system's CA bundle (certifi's), certificates and host names verified."""
    return httpx.create_ssl_context(trust_env=False)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose sockets share one deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__(trust_env=False)
        # httpx builds its httpcore pool without a way to pass a network backend: rebuild it.
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls_context(),
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_DeadlineBackend(deadline),
        )


def post_checked(checked: CheckedUrl, *, content: bytes, headers: dict[str, str]) -> HttpResult:
    """POST `content` to the checked address. Raises httpx.HTTPError on network trouble."""
    url = checked.url
    target = url.copy_with(host=checked.address) if checked.address else url
    all_headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        # The excerpt is read raw: ask for it uncompressed.
        "Accept-Encoding": "identity",
        **headers,
        "Host": url.netloc.decode("ascii"),
    }
    extensions = {"sni_hostname": checked.host} if url.scheme == "https" else {}
    timeout = httpx.Timeout(TOTAL_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    deadline = time.monotonic() + TOTAL_TIMEOUT_SECONDS
    # One client per call: a shared pool would reuse a TLS connection made for another name
    # on the same address.
    transport = _DeadlineTransport(deadline)
    with httpx.Client(
        timeout=timeout, follow_redirects=False, trust_env=False, transport=transport
    ) as client:
        request = client.build_request(
            "POST", target, content=content, headers=all_headers, extensions=extensions
        )
        response = client.send(request, stream=True)
        try:
            excerpt = bytearray()
            for chunk in response.iter_raw():
                excerpt.extend(chunk)
                if len(excerpt) >= EXCERPT_BYTES:
                    break
        finally:
            response.close()
    return HttpResult(
        status_code=response.status_code,
        headers=response.headers,
        excerpt=bytes(excerpt[:EXCERPT_BYTES]).decode("utf-8", errors="replace"),
    )
