"""The customer's webhook endpoints: `/api/v1/accounts/{external_id}/webhook-endpoints[/{name}]`
(scope `manage` for every method, reads included: an endpoint's URL is the customer's).

Here, in alerts, because alerts own the event types an endpoint subscribes to; the endpoints
themselves live in `notifications` under the owner key `account:<id>` (alerts.notify.owner_key),
and every write goes through `notifications.services`. The `whsec_` secret is in the answer of
the PUT that creates an endpoint and of `rotate-secret`, and in no other answer.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.api.serializers import (
    RotateSecretInputSerializer,
    WebhookEndpointInputSerializer,
    WebhookEndpointOutputSerializer,
    WebhookEndpointPageSerializer,
    WebhookEndpointWithSecretSerializer,
)
from alerts.notify import owner_key
from metering import selectors as metering_selectors
from metering.api.authentication import HasScope
from metering.api.errors import ApiError
from metering.api.paging import keyset_page, page_limit
from metering.api.serializers import ErrorSerializer
from metering.api.views import BoundedJSONParser
from notifications import services as notifications
from notifications.models import WebhookEndpoint

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

_ERRORS = {
    401: OpenApiResponse(
        ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
    ),
    403: OpenApiResponse(ErrorSerializer, description="insufficient_scope"),
    404: OpenApiResponse(ErrorSerializer, description="not_found (no such account or endpoint)"),
}
_INVALID = OpenApiResponse(
    ErrorSerializer,
    description="malformed_json; invalid (per-field `errors`: an unknown event type, a URL "
    "that is not https or points at a private address, a bad name)",
)


def _reason(request) -> str:
    return f"API key {request.auth.prefix}"


def _owner(external_id: str) -> str:
    """The owner key of the account, or a 404 (as every account API answers)."""
    account = metering_selectors.account_get(external_id=external_id)
    if account is None:
        raise exceptions.NotFound(f"No account {external_id!r}.")
    return owner_key(account.pk)


def _endpoint(external_id: str, name: str) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(owner_key=_owner(external_id), name=name).first()
    if endpoint is None:
        raise exceptions.NotFound(f"No webhook endpoint {name!r} on account {external_id!r}.")
    return endpoint


def _invalid(exc: DjangoValidationError) -> ApiError:
    """The service's field errors as the API's: `invalid` with `invalid_<field>` per message."""
    errors = [
        {"field": field, "code": f"invalid_{field}", "message": message}
        for field, messages in exc.message_dict.items()
        for message in messages
    ]
    return ApiError(status.HTTP_400_BAD_REQUEST, "invalid", "The request is not valid.", errors)


class _ManageView(APIView):
    permission_classes = [HasScope.of("manage")]
    parser_classes = [BoundedJSONParser]


_NAME = OpenApiParameter(
    "name",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="The endpoint's name within the account: 1 to 100 letters, digits, '.', '_' "
    "or '-', starting with a letter or digit.",
)


class WebhookEndpointListView(_ManageView):
    @extend_schema(
        operation_id="webhook_endpoints_list",
        summary="List an account's webhook endpoints",
        description=(
            "The account's endpoints by name, without their secrets. Paged: follow `next` "
            "(null on the last page). Scope: `manage`."
        ),
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"1-{MAX_LIMIT}"),
            OpenApiParameter("after", OpenApiTypes.STR, description="Cursor, from `next`"),
        ],
        responses={
            200: WebhookEndpointPageSerializer,
            400: OpenApiResponse(ErrorSerializer, description="invalid_parameter"),
            **_ERRORS,
        },
        tags=["webhooks"],
    )
    def get(self, request, external_id: str):
        limit = page_limit(request, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        endpoints = WebhookEndpoint.objects.filter(owner_key=_owner(external_id)).order_by("name")
        after = request.query_params.get("after")
        if after:
            endpoints = endpoints.filter(name__gt=after)
        page, next_url = keyset_page(
            request, endpoints, limit=limit, cursor_param="after", cursor_of=lambda e: e.name
        )
        return Response(
            {
                "results": WebhookEndpointOutputSerializer(page, many=True).data,
                "next": next_url,
            }
        )


class WebhookEndpointDetailView(_ManageView):
    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        summary="Read a webhook endpoint",
        description="The endpoint, never its secret. Scope: `manage`.",
        parameters=[_NAME],
        responses={200: WebhookEndpointOutputSerializer, **_ERRORS},
        tags=["webhooks"],
    )
    def get(self, request, external_id: str, name: str):
        return Response(WebhookEndpointOutputSerializer(_endpoint(external_id, name)).data)

    @extend_schema(
        operation_id="webhook_endpoints_upsert",
        summary="Create or update a webhook endpoint (idempotent)",
        description=(
            "The body is the whole endpoint. 201 when created, with the `whsec_` signing "
            "`secret`, shown this once (rotate it to get a new one); 200 when it existed, "
            "without it. Event types: `usage.spike`, `usage.drop`, "
            "`invoice.projected_threshold`, `quota.threshold`, `account.billing_hold`. In "
            "production the URL must be https and its host must resolve to public addresses "
            "only. Disabling cancels pending deliveries; enabling again clears the failure "
            "state. Scope: `manage`."
        ),
        parameters=[_NAME],
        request=WebhookEndpointInputSerializer,
        responses={
            200: WebhookEndpointOutputSerializer,
            201: WebhookEndpointWithSecretSerializer,
            400: _INVALID,
            **_ERRORS,
        },
        tags=["webhooks"],
    )
    def put(self, request, external_id: str, name: str):
        owner = _owner(external_id)
        data = WebhookEndpointInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            endpoint, secret, created = notifications.webhook_endpoint_upsert(
                owner_key=owner, name=name, **data.validated_data, reason=_reason(request)
            )
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        if created:
            body = WebhookEndpointWithSecretSerializer(endpoint).data
            body["secret"] = secret
            return Response(body, status=status.HTTP_201_CREATED)
        return Response(WebhookEndpointOutputSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_destroy",
        summary="Delete a webhook endpoint",
        description=(
            "Deletes the endpoint with its pending deliveries and their log (the history keeps "
            "a record of the endpoint). Scope: `manage`."
        ),
        parameters=[_NAME],
        responses={204: OpenApiResponse(description="Deleted."), **_ERRORS},
        tags=["webhooks"],
    )
    def delete(self, request, external_id: str, name: str):
        notifications.webhook_endpoint_delete(endpoint=_endpoint(external_id, name))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretView(_ManageView):
    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        summary="Rotate a webhook endpoint's secret",
        description=(
            "A new `whsec_` secret, in this answer only. For `overlap_hours` (default 24, up "
            "to 168) the previous secret signs too: `webhook-signature` carries both "
            "signatures, so the receiver can switch without losing a message. The body may be "
            "empty. Scope: `manage`."
        ),
        parameters=[_NAME],
        request=RotateSecretInputSerializer,
        responses={
            200: WebhookEndpointWithSecretSerializer,
            400: OpenApiResponse(ErrorSerializer, description="malformed_json, invalid"),
            **_ERRORS,
        },
        tags=["webhooks"],
    )
    def post(self, request, external_id: str, name: str):
        endpoint = _endpoint(external_id, name)
        data = RotateSecretInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        secret = notifications.webhook_endpoint_rotate_secret(
            endpoint=endpoint, overlap_hours=data.validated_data["overlap_hours"]
        )
        body = WebhookEndpointWithSecretSerializer(endpoint).data
        body["secret"] = secret
        return Response(body)
