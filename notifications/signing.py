"""Standard Webhooks signatures (https://www.standardwebhooks.com), with the `standardwebhooks`
package: `webhook-signature` is `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`; during a
secret rotation's overlap it carries one such entry per secret, space-separated, and receivers
accept the message when any entry verifies with the secret they hold."""

from __future__ import annotations

import base64
import datetime as dt
import secrets

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


def webhook_secret_generate() -> str:
    """A new `whsec_` secret: 32 random bytes, base64 (the spec asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def webhook_headers(
    *, message_id: str, timestamp: dt.datetime, body: str, secrets_: list[str]
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed with every given secret."""
    signatures = [
        Webhook(secret).sign(msg_id=message_id, timestamp=timestamp, data=body)
        for secret in secrets_
    ]
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
