"""API keys: created once, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from metering.models import ApiKey

KEY_PREFIX = "mo_"


class InvalidScopes(ValueError):
    pass


def api_key_hash(raw_key: str) -> str:
    # Keys are 256 bits of randomness, so a fast unsalted hash is safe here (no dictionary to
    # attack) and lets authentication look the key up by its hash in one indexed query.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, name: str, scopes: list[str], actor=None) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw key, which is never stored or shown again."""
    valid = set(ApiKey.Scope.values)
    unknown = sorted(set(scopes) - valid)
    if not scopes or unknown:
        raise InvalidScopes(
            f"Unknown scopes {unknown}; choose from {sorted(valid)}."
            if unknown
            else f"Give at least one scope from {sorted(valid)}."
        )
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        key = ApiKey(
            name=name,
            prefix=raw[:12],
            key_hash=api_key_hash(raw),
            scopes=sorted(set(scopes)),
            created_by=actor,
        )
        key._history_user = actor
        key.save()
    return key, raw


def api_key_revoke(*, key: ApiKey, actor=None) -> ApiKey:
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key._history_user = actor
        key.save(update_fields=["revoked_at"])
    return key
