"""Read request bodies sent with Transfer-Encoding: chunked (no Content-Length) under gunicorn.

Django sizes a request body by CONTENT_LENGTH only (its LimitedStream), so a chunked request,
which has none, reads as empty: a chunked batch of events was answered `malformed_json`, and a
chunked `PUT /accounts/...` silently upserted an account with every field at its default.

A WSGI server that sets `wsgi.input_terminated` (gunicorn does, for every request) promises
that `wsgi.input` ends where the body ends, so the body can be read to its end. This wrapper
reads it, at most one byte past the largest body any view accepts, and hands Django a body of
known length: the views then apply their own limits as for any other request. A body over the
cap is cut at cap + 1 bytes and declared at that length, so the ingestion views answer 413
`body_too_large` without parsing a byte of it (and Django's own views RequestDataTooBig).
Without `wsgi.input_terminated` nothing changes: reading to the end could block forever.
"""

from __future__ import annotations

import io

from django.conf import settings


def body_cap() -> int:
    """The largest body any view accepts; one byte more is enough to know a body is too big."""
    return max(settings.INGEST_MAX_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


class ReadChunkedBody:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if (
            not environ.get("CONTENT_LENGTH")
            and environ.get("wsgi.input_terminated")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            body = environ["wsgi.input"].read(body_cap() + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)
