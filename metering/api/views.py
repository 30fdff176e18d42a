"""The public API (see DESIGN.md, "Public contract"): events in, accounts and meters managed.

Views are thin: read and check the request, call one service or selector, shape the answer.
The event views read the raw body themselves so that the size limit is enforced before parsing
and numbers are parsed exactly (metering.exact_json), and answer with orjson: a 1,000-event
batch answer is 1,000 result objects, which DRF's JSON renderer would serialise several times
slower.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import APIView

from metering import exact_json, selectors
from metering.account_holds import account_hold
from metering.api import serializers as s
from metering.api.authentication import HasScope
from metering.api.errors import ApiError, body_too_large
from metering.api.throttling import INGEST as INGEST_RATE
from metering.services.accounts import account_upsert, meter_upsert
from metering.services.ingest import CONFLICT, REJECTED, events_ingest


@require_GET
def healthz(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any database failure makes the instance unhealthy
        return JsonResponse(
            {"status": "error", "database": str(exc.__class__.__name__)}, status=503
        )
    return JsonResponse({"status": "ok", "database": "ok"})


# --- events ------------------------------------------------------------------------------------

JSON = "application/json"
CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"

_ERRORS = {
    400: OpenApiResponse(s.ErrorSerializer, description="malformed_json, invalid_body"),
    401: OpenApiResponse(
        s.ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
    ),
    403: OpenApiResponse(s.ErrorSerializer, description="insufficient_scope"),
    413: OpenApiResponse(s.ErrorSerializer, description="body_too_large, batch_too_large"),
    415: OpenApiResponse(s.ErrorSerializer, description="unsupported_media_type"),
}


def _json_response(body: dict[str, Any], status_code: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status_code, content_type=JSON)


def _media_type(request) -> str:
    return request.META.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()


def _read_json(request, formats: dict[str, str]) -> tuple[str, Any]:
    """(format, parsed body), after the content type and size checks; nothing parsed before."""
    media_type = _media_type(request)
    fmt = formats.get(media_type)
    if fmt is None:
        raise ApiError(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            f"Content-Type {media_type or '(none)'!r} is not supported here; "
            f"use one of {', '.join(formats)}.",
        )
    limit = settings.INGEST_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise body_too_large(limit)
    body = request.body
    if len(body) > limit:
        raise body_too_large(limit)
    try:
        return fmt, exact_json.loads(body)
    except exact_json.JSONError as exc:
        raise ApiError(
            status.HTTP_400_BAD_REQUEST, "malformed_json", f"The body is not valid JSON: {exc}"
        ) from None


def _invalid_body(message: str) -> ApiError:
    return ApiError(status.HTTP_400_BAD_REQUEST, "invalid_body", message)


class EventIngestView(APIView):
    """POST /api/v1/events: one Lago event ({"event": {...}}) or one CloudEvent."""

    permission_classes = [HasScope.of("ingest")]
    throttle_scope = INGEST_RATE

    @extend_schema(
        operation_id="events_create",
        summary="Send one usage event",
        description=(
            'Lago format (`application/json`, `{"event": {...}}`) or one structured-mode '
            "CloudEvent (`application/cloudevents+json`). Retry freely: the same "
            "transaction id with the same content is a `duplicate` and counted once. "
            "Events for an unknown account or meter are `quarantined` and replayed once "
            "those exist. Scope: `ingest`."
        ),
        request={JSON: s.LagoSingleSerializer, CLOUDEVENT: s.CloudEventSerializer},
        responses={
            200: s.EventResultSerializer,
            409: OpenApiResponse(
                s.EventRejectedSerializer, description="conflict: same id, different content"
            ),
            **_ERRORS,
            400: OpenApiResponse(
                s.EventRejectedSerializer,
                description="malformed_json, invalid_body, or the event's first error code "
                "(e.g. missing_field, invalid_timestamp, timestamp_in_future, invalid_value)",
            ),
        },
        examples=[
            OpenApiExample(
                "Lago event",
                request_only=True,
                media_type=JSON,
                value={
                    "event": {
                        "transaction_id": "req_01HZX3",
                        "external_customer_id": "acme",
                        "code": "api_calls",
                        "timestamp": 1732200000,
                        "properties": {"endpoint": "/v1/search", "tokens": "1250.5"},
                    }
                },
            ),
        ],
        tags=["events"],
    )
    def post(self, request):
        fmt, body = _read_json(request, {JSON: "lago", CLOUDEVENT: "cloudevents"})
        if fmt == "lago":
            if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
                raise _invalid_body('Send one event as {"event": {...}}.')
            item = body["event"]
        else:
            if not isinstance(body, dict):
                raise _invalid_body("Send one CloudEvent as a JSON object.")
            item = body
        result = events_ingest(items=[item], fmt=fmt).results[0]
        if result.status == REJECTED:
            first = result.errors[0]
            return _json_response(
                {
                    "code": first["code"],
                    "message": f"The event is not valid: {first['message']}",
                    "errors": result.errors,
                    "status": result.status,
                    "transaction_id": result.transaction_id,
                },
                status.HTTP_400_BAD_REQUEST,
            )
        if result.status == CONFLICT:
            return _json_response(
                {
                    "code": "conflict",
                    "message": result.errors[0]["message"],
                    "errors": result.errors,
                    "status": result.status,
                    "transaction_id": result.transaction_id,
                },
                status.HTTP_409_CONFLICT,
            )
        return _json_response(
            {
                "status": result.status,
                "transaction_id": result.transaction_id,
                "event_id": result.event_id,
            }
        )


class EventBatchView(APIView):
    """POST /api/v1/events/batch: {"events": [...]} or a CloudEvents batch (a JSON array)."""

    permission_classes = [HasScope.of("ingest")]
    throttle_scope = INGEST_RATE

    @extend_schema(
        operation_id="events_batch_create",
        summary="Send a batch of usage events",
        description=(
            'Lago format (`application/json`, `{"events": [...]}`) or a CloudEvents batch '
            "(`application/cloudevents-batch+json`, a JSON array). A well-formed request is "
            "answered 200 with counts and one result per item, in order; a bad item is "
            "`rejected` with error codes and never costs the good ones. Over the item or byte "
            "limit: 413 and nothing is written. Scope: `ingest`."
        ),
        request={JSON: s.LagoBatchSerializer, CLOUDEVENTS_BATCH: s.CloudEventSerializer(many=True)},
        responses={200: s.BatchResultSerializer, **_ERRORS},
        tags=["events"],
    )
    def post(self, request):
        fmt, body = _read_json(request, {JSON: "lago", CLOUDEVENTS_BATCH: "cloudevents"})
        if fmt == "lago":
            if not isinstance(body, dict) or not isinstance(body.get("events"), list):
                raise _invalid_body('Send a batch as {"events": [...]}.')
            items = body["events"]
        else:
            if not isinstance(body, list):
                raise _invalid_body("Send a CloudEvents batch as a JSON array.")
            items = body
        limit = settings.INGEST_MAX_BATCH_ITEMS
        if len(items) > limit:
            raise ApiError(
                status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                "batch_too_large",
                f"The batch has {len(items)} events; the limit is {limit}. Nothing was written.",
            )
        return _json_response(events_ingest(items=items, fmt=fmt).as_dict())


# --- accounts and meters -----------------------------------------------------------------------


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the body size limit and no 500 on absurdly deep nesting."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.INGEST_MAX_BODY_BYTES
        if request is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                raise body_too_large(limit)
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("The JSON is nested too deeply.") from None


def _validation_error(exc: DjangoValidationError) -> exceptions.ValidationError:
    """Django's field errors as DRF's, codes kept (timezone -> invalid_timezone, ...)."""
    return exceptions.ValidationError(as_serializer_error(exc))


def _history_reason(request) -> str:
    return f"API key {request.auth.prefix}"


class _ScopedByMethod(APIView):
    """GET needs `read`, writes need `manage`."""

    parser_classes = [BoundedJSONParser]

    def get_permissions(self):
        scope = "read" if self.request.method in ("GET", "HEAD", "OPTIONS") else "manage"
        return [HasScope.of(scope)()]


def _upsert_response(request, *, input_serializer, output_serializer, upsert, **key) -> Response:
    """PUT as an idempotent upsert: validate, call the service, 201 if created else 200."""
    data = input_serializer(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        obj, created = upsert(**key, **data.validated_data, reason=_history_reason(request))
    except DjangoValidationError as exc:
        raise _validation_error(exc) from None
    return Response(
        output_serializer(obj).data,
        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
    )


def _account_out(account) -> dict:
    return s.AccountOutputSerializer(account).data


def _meter_out(meter) -> dict:
    return s.MeterOutputSerializer(meter).data


_NOT_FOUND = OpenApiResponse(s.ErrorSerializer, description="not_found")


class AccountDetailView(_ScopedByMethod):
    @extend_schema(
        operation_id="accounts_retrieve",
        summary="Read an account",
        responses={200: s.AccountDetailOutputSerializer, 404: _NOT_FOUND, **_ERRORS},
        tags=["accounts"],
    )
    def get(self, request, external_id: str):
        account = selectors.account_get(external_id=external_id)
        if account is None:
            raise exceptions.NotFound(f"No account {external_id!r}.")
        # Alerts' billing hold, read through metering.account_holds.
        account.billing_hold = account_hold(account.pk)
        return Response(s.AccountDetailOutputSerializer(account).data)

    @extend_schema(
        operation_id="accounts_upsert",
        summary="Create or update an account (idempotent)",
        description=(
            "The body is the whole account; a field left out takes its default. 201 when "
            "created, 200 when it existed. Creating an account queues the replay of its "
            "quarantined events (a task after the answer, up to 10,000 at once; the rest from "
            "the admin): the answer says `replay: queued`. A new time zone queues a rebuild of "
            "its rollups. Scope: `manage`."
        ),
        request=s.AccountInputSerializer,
        responses={
            200: s.AccountUpsertOutputSerializer,
            201: s.AccountUpsertOutputSerializer,
            400: OpenApiResponse(s.ErrorSerializer, description="invalid (see errors)"),
            **{k: v for k, v in _ERRORS.items() if k != 400},
        },
        tags=["accounts"],
    )
    def put(self, request, external_id: str):
        return _upsert_response(
            request,
            input_serializer=s.AccountInputSerializer,
            output_serializer=s.AccountUpsertOutputSerializer,
            upsert=account_upsert,
            external_id=external_id,
        )


class MeterListView(APIView):
    permission_classes = [HasScope.of("read")]

    @extend_schema(
        operation_id="meters_list",
        summary="List meters",
        responses={200: s.MeterOutputSerializer(many=True), **_ERRORS},
        tags=["meters"],
    )
    def get(self, request):
        return Response([_meter_out(m) for m in selectors.meter_list()])


class MeterDetailView(_ScopedByMethod):
    @extend_schema(
        operation_id="meters_retrieve",
        summary="Read a meter",
        responses={200: s.MeterOutputSerializer, 404: _NOT_FOUND, **_ERRORS},
        tags=["meters"],
    )
    def get(self, request, code: str):
        meter = selectors.meter_get(code=code)
        if meter is None:
            raise exceptions.NotFound(f"No meter {code!r}.")
        return Response(_meter_out(meter))

    @extend_schema(
        operation_id="meters_upsert",
        summary="Create or update a meter (idempotent)",
        description=(
            "The body is the whole meter. 201 when created, 200 when it existed. Once a meter "
            "has events its aggregation and value property cannot change. Creating a meter "
            "queues the replay of its quarantined events (a task after the answer, up to 10,000 "
            "at once): the answer says `replay: queued`. Scope: `manage`."
        ),
        request=s.MeterInputSerializer,
        responses={
            200: s.MeterUpsertOutputSerializer,
            201: s.MeterUpsertOutputSerializer,
            400: OpenApiResponse(s.ErrorSerializer, description="invalid (see errors)"),
            **{k: v for k, v in _ERRORS.items() if k != 400},
        },
        tags=["meters"],
    )
    def put(self, request, code: str):
        return _upsert_response(
            request,
            input_serializer=s.MeterInputSerializer,
            output_serializer=s.MeterUpsertOutputSerializer,
            upsert=meter_upsert,
            code=code,
        )
