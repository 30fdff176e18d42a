"""The adjustments API: an account's adjustments (scope `read`) and a new one (scope `adjust`).

The same service and policy as the admin: the API key is its own requester; within the
policy's limit the adjustment is applied at once, above it it waits as `requested` for a
Manager in the admin. A repeated `idempotency_key` (per key) answers the first adjustment.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from adjustments.api.serializers import (
    AdjustmentInputSerializer,
    AdjustmentPageSerializer,
    AdjustmentSerializer,
)
from adjustments.models import Adjustment
from adjustments.services import Actor, AdjustmentError, NotPermitted, adjustment_request
from alerts.models import Alert
from metering.api.authentication import HasScope
from metering.api.errors import ApiError
from metering.api.paging import keyset_page, page_limit
from metering.api.serializers import ErrorSerializer
from metering.api.views import BoundedJSONParser
from metering.models import Account, Meter
from reconciliation.models import Mismatch

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

_AUTH_ERRORS = {
    401: OpenApiResponse(
        ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
    ),
    403: OpenApiResponse(ErrorSerializer, description="insufficient_scope, not_permitted"),
    404: OpenApiResponse(ErrorSerializer, description="not_found (account)"),
}


def _positive(request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        raise ApiError(
            status.HTTP_400_BAD_REQUEST, "invalid_parameter", f"{name} must be a positive integer."
        )
    return value


def _account(external_id: str) -> Account:
    account = Account.objects.filter(external_id=external_id).first()
    if account is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "not_found", f"No account {external_id!r}.")
    return account


def _out(adjustment: Adjustment) -> dict:
    return AdjustmentSerializer(adjustment).data


def _linked(model, pk: int | None, what: str):
    if pk is None:
        return None
    obj = model.objects.filter(pk=pk).first()
    if obj is None:
        raise ApiError(status.HTTP_400_BAD_REQUEST, "invalid_body", f"No {what} {pk}.")
    return obj


class AccountAdjustmentsView(APIView):
    parser_classes = [BoundedJSONParser]

    def get_permissions(self):
        scope = "read" if self.request.method in ("GET", "HEAD", "OPTIONS") else "adjust"
        return [HasScope.of(scope)()]

    @extend_schema(
        operation_id="adjustments_list",
        summary="List an account's adjustments (newest first)",
        description=(
            "Credits and usage corrections of the account, newest first, every state. Amounts "
            "are integer minor units of `currency`; quantities are decimal strings; days are "
            "local dates in the account's zone. Paged: follow `next` (null on the last page). "
            "Scope: `read`."
        ),
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"1-{MAX_PAGE_SIZE}"),
            OpenApiParameter("before", OpenApiTypes.INT, description="Cursor, from `next`"),
        ],
        responses={
            200: AdjustmentPageSerializer,
            400: OpenApiResponse(ErrorSerializer, description="invalid_parameter"),
            **_AUTH_ERRORS,
        },
        tags=["adjustments"],
    )
    def get(self, request, external_id: str):
        account = _account(external_id)
        limit = page_limit(request, default=PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        before = _positive(request, "before", None)
        rows = (
            Adjustment.objects.filter(account=account)
            .select_related("account", "meter", "period", "requested_by", "requested_by_key")
            .select_related("approved_by")
            .order_by("-pk")
        )
        if before is not None:
            rows = rows.filter(pk__lt=before)
        page, next_url = keyset_page(
            request, rows, limit=limit, cursor_param="before", cursor_of=lambda a: a.pk
        )
        return Response({"results": [_out(a) for a in page], "next": next_url})

    @extend_schema(
        operation_id="adjustments_create",
        summary="Request a credit or a usage correction",
        description=(
            "`credit`: `amount_minor` in the account's currency, on the open period (or the "
            "invoiced period `period_start`). `usage_correction`: the `corrected_quantity` of "
            "`meter` over `day` (or the whole period `period_start`), written as correction "
            "events; on an invoiced period the price difference is credited. `reason_code` and "
            "`note` are required. The four-eyes policy applies: within the limit (default "
            "100.00 in the account's currency) the answer is `applied` (or `failed`, with the "
            "provider's error, retried from the admin); above it, `requested`, waiting for a "
            "Manager. 201 when made; 200 with the first answer for a repeated "
            "`idempotency_key`. Scope: `adjust`."
        ),
        request=AdjustmentInputSerializer,
        responses={
            200: AdjustmentSerializer,
            201: AdjustmentSerializer,
            400: OpenApiResponse(
                ErrorSerializer,
                description="invalid, malformed_json, invalid_body, invalid_adjustment, "
                "currency_mismatch, unknown_period, unsupported_meter, correction_raises_usage",
            ),
            **_AUTH_ERRORS,
            413: OpenApiResponse(ErrorSerializer, description="body_too_large"),
            415: OpenApiResponse(ErrorSerializer, description="unsupported_media_type"),
        },
        tags=["adjustments"],
    )
    def post(self, request, external_id: str):
        account = _account(external_id)
        body = AdjustmentInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        meter = None
        if data.get("meter"):
            meter = Meter.objects.filter(code=data["meter"]).first()
            if meter is None:
                raise ApiError(
                    status.HTTP_400_BAD_REQUEST, "invalid_body", f"No meter {data['meter']!r}."
                )
        try:
            adjustment, created = adjustment_request(
                account=account,
                kind=data["kind"],
                reason_code=data["reason_code"],
                note=data["note"],
                actor=Actor(api_key=request.auth),
                amount_minor=data.get("amount_minor"),
                currency=data.get("currency") or None,
                meter=meter,
                period_start=data.get("period_start"),
                day=data.get("day"),
                corrected_quantity=data.get("corrected_quantity"),
                ticket=data.get("ticket", ""),
                mismatch=_linked(Mismatch, data.get("mismatch"), "mismatch"),
                alert=_linked(Alert, data.get("alert"), "alert"),
                idempotency_key=data.get("idempotency_key", ""),
            )
        except NotPermitted as exc:
            raise ApiError(status.HTTP_403_FORBIDDEN, exc.code, exc.message) from None
        except AdjustmentError as exc:
            raise ApiError(status.HTTP_400_BAD_REQUEST, exc.code, exc.message) from None
        adjustment = (
            Adjustment.objects.select_related("account", "meter", "period", "approved_by")
            .select_related("requested_by_key")
            .get(pk=adjustment.pk)
        )
        return Response(
            _out(adjustment), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )
