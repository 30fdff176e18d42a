"""Bearer API keys. Keys are looked up by hash; scopes are checked per view."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions
from simple_history.models import HistoricalRecords

from metering.models import ApiKey
from metering.selectors import api_key_get
from metering.services.api_keys import api_key_hash

# Writing last_used_at on every request would turn every read into a write; once a minute is
# enough for "is this key still in use?".
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyUser:
    """The request.user for API calls: the key, not a Django user."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey):
        self.key = key

    def __str__(self) -> str:
        return f"api-key:{self.key.prefix}"


def _history_without_request_user() -> None:
    """simple-history names request.user as the acting user of every history row written
    during a request; under an API key that is an ApiKeyUser, which no history row can hold.
    Forget the request for this call, so rows written by a service that did not name its
    actor get none (services that act for a key say so in the change reason)."""
    try:
        del HistoricalRecords.context.request
    except AttributeError:
        pass


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            raise exceptions.AuthenticationFailed(
                "Send the API key as 'Authorization: Bearer <key>'.", code="invalid_authorization"
            )
        key = api_key_get(key_hash=api_key_hash(parts[1]))
        if key is None:
            raise exceptions.AuthenticationFailed("Unknown API key.", code="invalid_api_key")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed(
                "This API key was revoked.", code="revoked_api_key"
            )
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        _history_without_request_user()
        return ApiKeyUser(key), key

    def authenticate_header(self, request):
        return self.keyword


class HasScope(permissions.BasePermission):
    """Use as `permission_classes = [HasScope.of("ingest")]`."""

    required_scope = ""
    message = "This API key lacks the required scope."
    code = "insufficient_scope"

    @classmethod
    def of(cls, scope: str):
        return type(f"HasScope_{scope}", (cls,), {"required_scope": scope})

    def has_permission(self, request, view):
        key = request.auth
        if not isinstance(key, ApiKey):
            return False
        if not key.has_scope(self.required_scope):
            self.message = f"This API key lacks the '{self.required_scope}' scope."
            return False
        return True


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents the bearer key in the OpenAPI schema."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`mo_...`) with the scope the operation names.",
        }
