"""GET /api/v1/reconciliation/mismatches (scope `read`).

Filters: `status` (open, acknowledged, resolved; default open), `account` (external id),
`meter` (code), `cause` (a cause code anywhere in the ranking), `platform` (the billing
platform compared against: the primary, or the read-only secondary during a migration),
`limit` (1-500, default 100); any other parameter is a 400. Each result names its `platform`;
`provider` stays the platform's number (the contract).
Sorted by money at stake, largest first; paged with an opaque `cursor` in `next`.
"""

from __future__ import annotations

import base64
from decimal import Decimal

from django.db.models import Prefetch, Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.providers.base import decimal_text
from metering.api.authentication import HasScope
from metering.api.paging import (
    invalid_parameter,
    keyset_page,
    page_limit,
    refuse_unknown_parameters,
)
from metering.api.serializers import ErrorSerializer
from reconciliation.api.serializers import MismatchPageSerializer
from reconciliation.models import Cause, Mismatch, MismatchDay

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
LIST_PARAMETERS = ("status", "account", "meter", "cause", "platform", "limit", "cursor")


def _text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def _encode(mismatch: Mismatch) -> str:
    raw = f"{mismatch.delta_amount_minor}.{mismatch.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[int, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        amount, pk = base64.urlsafe_b64decode(padded.encode()).decode().split(".")
        return int(amount), int(pk)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_parameter("cursor", "The cursor is not one this API gave.") from exc


def mismatch_out(m: Mismatch) -> dict:
    return {
        "id": m.pk,
        "account": m.account.external_id,
        "meter": m.meter.code,
        "period_start": m.period_start.isoformat(),
        "period_end": m.period_end.isoformat(),
        "status": m.status,
        "causes": m.causes,
        "ours": _text(m.ours),
        "reported": _text(m.reported),
        "provider": _text(m.provider_value),
        "invoiced": _text(m.invoiced),
        "delta": _text(m.delta),
        "delta_amount_minor": m.delta_amount_minor,
        "currency": m.currency,
        "platform": m.provider,
        "days": [
            {
                "day": d.day.isoformat(),
                "ours": _text(d.ours),
                "reported": _text(d.reported),
                "provider": _text(d.provider),
            }
            for d in m.days.all()
        ],
    }


class MismatchListView(APIView):
    permission_classes = [HasScope.of("read")]

    @extend_schema(
        operation_id="reconciliation_mismatches_list",
        summary="Reconciliation mismatches",
        description=(
            "Cells (account × meter × billing period) where our usage, what we reported to the "
            "billing provider and what it recorded differ by more than the threshold, with "
            "ranked causes and the three numbers per UTC day. Decimals are strings. Each "
            "platform reconciled (the primary, and a read-only secondary during a migration) "
            "has its own mismatches, named by `platform`. Without filters: the open "
            "mismatches, largest money at stake first. Scope: `read`."
        ),
        parameters=[
            OpenApiParameter(
                "status", OpenApiTypes.STR, enum=list(Mismatch.Status.values), default="open"
            ),
            OpenApiParameter("account", OpenApiTypes.STR, description="The account's external id."),
            OpenApiParameter("meter", OpenApiTypes.STR, description="The meter's code."),
            OpenApiParameter("cause", OpenApiTypes.STR, enum=list(Cause.values)),
            OpenApiParameter(
                "platform",
                OpenApiTypes.STR,
                description="The billing platform compared against (e.g. stripe, orb).",
            ),
            OpenApiParameter("limit", OpenApiTypes.INT, description="1-500, default 100."),
            OpenApiParameter("cursor", OpenApiTypes.STR, description="From `next`."),
        ],
        responses={
            200: MismatchPageSerializer,
            400: OpenApiResponse(ErrorSerializer, description="invalid_parameter"),
            401: OpenApiResponse(
                ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
            ),
            403: OpenApiResponse(ErrorSerializer, description="insufficient_scope"),
        },
        tags=["reconciliation"],
    )
    def get(self, request):
        refuse_unknown_parameters(request, LIST_PARAMETERS)
        params = request.query_params
        # A parameter given empty is a value like any other (and none of the enums' own).
        wanted = params.get("status", Mismatch.Status.OPEN)
        if wanted not in Mismatch.Status.values:
            raise invalid_parameter(
                "status", f"status is one of {', '.join(Mismatch.Status.values)}."
            )
        mismatches = Mismatch.objects.filter(status=wanted)
        if params.get("account"):
            mismatches = mismatches.filter(account__external_id=params["account"])
        if params.get("meter"):
            mismatches = mismatches.filter(meter__code=params["meter"])
        if params.get("platform"):
            mismatches = mismatches.filter(provider=params["platform"])
        cause = params.get("cause")
        if cause is not None:
            if cause not in Cause.values:
                raise invalid_parameter("cause", f"cause is one of {', '.join(Cause.values)}.")
            mismatches = mismatches.filter(causes__contains=[{"code": cause}])
        limit = page_limit(request, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        if params.get("cursor"):
            amount, pk = _decode(params["cursor"])
            mismatches = mismatches.filter(
                Q(delta_amount_minor__lt=amount) | Q(delta_amount_minor=amount, pk__lt=pk)
            )
        page, next_url = keyset_page(
            request,
            mismatches.select_related("account", "meter")
            .prefetch_related(Prefetch("days", queryset=MismatchDay.objects.order_by("day")))
            .order_by("-delta_amount_minor", "-pk"),
            limit=limit,
            cursor_param="cursor",
            cursor_of=_encode,
        )
        return Response({"results": [mismatch_out(m) for m in page], "next": next_url})
