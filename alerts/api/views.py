"""The alerts API: the alert queue, read-only, paged by id (newest first)."""

from __future__ import annotations

from urllib.parse import urlencode

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.api.serializers import AlertPageSerializer, AlertSerializer
from alerts.models import Alert, AlertRule
from alerts.selectors import alert_list
from metering.api.authentication import HasScope
from metering.api.errors import ApiError
from metering.api.serializers import ErrorSerializer

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def _int(request, name: str, default: int | None) -> int | None:
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


class AlertListView(APIView):
    permission_classes = [HasScope.of("read")]

    @extend_schema(
        operation_id="alerts_list",
        summary="List alerts (newest first)",
        description=(
            "Alerts opened by the alert rules, newest first, filtered by `status` (open, "
            "acknowledged, snoozed, resolved), `account` (external id) and `kind` (spike, drop, "
            "invoice, quota). Decimals are strings; `level` is warning or critical. Paged: "
            "follow `next` (null on the last page). Scope: `read`."
        ),
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Alert.Status.values),
            OpenApiParameter("account", OpenApiTypes.STR, description="Account external id"),
            OpenApiParameter("kind", OpenApiTypes.STR, enum=AlertRule.Kind.values),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"1-{MAX_PAGE_SIZE}"),
            OpenApiParameter("before", OpenApiTypes.INT, description="Cursor, from `next`"),
        ],
        responses={
            200: AlertPageSerializer,
            400: OpenApiResponse(ErrorSerializer, description="invalid_parameter"),
            401: OpenApiResponse(
                ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
            ),
            403: OpenApiResponse(ErrorSerializer, description="insufficient_scope"),
        },
        tags=["alerts"],
    )
    def get(self, request):
        params = request.query_params
        status_ = params.get("status") or None
        kind = params.get("kind") or None
        if status_ and status_ not in Alert.Status.values:
            raise ApiError(
                status.HTTP_400_BAD_REQUEST,
                "invalid_parameter",
                f"status is one of {', '.join(Alert.Status.values)}.",
            )
        if kind and kind not in AlertRule.Kind.values:
            raise ApiError(
                status.HTTP_400_BAD_REQUEST,
                "invalid_parameter",
                f"kind is one of {', '.join(AlertRule.Kind.values)}.",
            )
        limit = min(_int(request, "limit", PAGE_SIZE), MAX_PAGE_SIZE)
        before = _int(request, "before", None)
        alerts = alert_list(status=status_, account=params.get("account") or None, kind=kind)
        if before is not None:
            alerts = alerts.filter(pk__lt=before)
        page = list(alerts[: limit + 1])
        next_url = None
        if len(page) > limit:
            page = page[:limit]
            query = {k: v for k, v in params.items() if k != "before"}
            query["before"] = page[-1].pk
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(query)}")
        return Response({"results": [AlertSerializer(a).data for a in page], "next": next_url})
