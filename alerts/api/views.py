"""The alerts API: the alert queue, read-only, paged by id (newest first)."""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts.api.serializers import AlertPageSerializer, AlertSerializer
from alerts.models import Alert, AlertRule
from alerts.selectors import alert_list
from metering.api.authentication import HasScope
from metering.api.paging import invalid_parameter, keyset_page, page_limit
from metering.api.serializers import ErrorSerializer

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


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
        # A filter sent empty is refused like any value outside its enum (the schema's promise).
        status_ = params.get("status")
        kind = params.get("kind")
        if status_ is not None and status_ not in Alert.Status.values:
            raise invalid_parameter("status", f"status is one of {', '.join(Alert.Status.values)}.")
        if kind is not None and kind not in AlertRule.Kind.values:
            raise invalid_parameter("kind", f"kind is one of {', '.join(AlertRule.Kind.values)}.")
        limit = page_limit(request, default=PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        alerts = alert_list(status=status_, account=params.get("account") or None, kind=kind)
        before = params.get("before")
        if before:
            if not re.fullmatch(r"[0-9]{1,18}", before):
                raise invalid_parameter("before", "before is the cursor from `next`.")
            alerts = alerts.filter(pk__lt=int(before))
        page, next_url = keyset_page(
            request, alerts, limit=limit, cursor_param="before", cursor_of=lambda a: a.pk
        )
        return Response({"results": [AlertSerializer(a).data for a in page], "next": next_url})
