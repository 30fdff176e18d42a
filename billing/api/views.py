"""The projected-invoice API. Thin: find the account, build the projection, shape it."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api.serializers import ProjectedInvoiceSerializer
from billing.projection import ProjectionUnavailable, projected_invoice_build
from metering import selectors
from metering.api.authentication import HasScope
from metering.api.errors import ApiError
from metering.api.serializers import ErrorSerializer


class ProjectedInvoiceView(APIView):
    permission_classes = [HasScope.of("read")]

    @extend_schema(
        operation_id="accounts_projected_invoice_retrieve",
        summary="The projected invoice of the account's open billing period",
        description=(
            "Usage so far in the open period, priced exactly, and a forecast to the period's "
            "end from the recent, weekday-aware run rate (count and sum meters: each remaining "
            "day at the mean of the same weekday over the last 4 weeks; max and latest meters: "
            "the current value; unique_count meters: the distinct count so far). Each line has "
            "its units, the tiers applied, amounts so far and projected (integer minor units "
            "and formatted), and a plain-language explanation; the invoice has the totals, the "
            "previous period's total and the change. Scope: `read`."
        ),
        responses={
            200: ProjectedInvoiceSerializer,
            401: OpenApiResponse(
                ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
            ),
            403: OpenApiResponse(ErrorSerializer, description="insufficient_scope"),
            404: OpenApiResponse(ErrorSerializer, description="not_found: no such account"),
            409: OpenApiResponse(
                ErrorSerializer,
                description=(
                    "no_active_subscription: no subscription covers today; no_open_period: the "
                    "current period is not open (not opened yet, or being invoiced)"
                ),
            ),
        },
        tags=["billing"],
    )
    def get(self, request, external_id: str):
        account = selectors.account_get(external_id=external_id)
        if account is None:
            raise exceptions.NotFound(f"No account {external_id!r}.")
        try:
            invoice = projected_invoice_build(account=account)
        except ProjectionUnavailable as exc:
            raise ApiError(status.HTTP_409_CONFLICT, exc.code, exc.message) from None
        return Response(ProjectedInvoiceSerializer(invoice).data)
