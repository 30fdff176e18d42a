"""GET /api/v1/accounts/{external_id}/usage: an account's usage of one meter, from the rollups.

Query parameters (scope `read`):

- `meter` (required): the meter code.
- `from`, `to` (required): the range, `to` exclusive. Either dates (`2024-05-01`), which are
  days in the account's time zone, or RFC 3339 times (`2024-05-01T00:00:00Z`; a `+` in an
  offset must be URL-encoded as `%2B`, though a space left by a bare `+` is read as `+`).
  Daily series need day boundaries: dates, or the instants those local days start at.
  Hourly series are UTC hours: dates mean the local midnight, and the bounds must fall on whole
  UTC hours (so for zones like Asia/Kolkata give RFC 3339 times).
- `granularity`: `day` (default) or `hour`. A daily range covers at most 400 days, an hourly
  one at most 1,080 hours (45 days) (metering.rollup_selectors.MAX_POINTS).
- `group_by`: one of the meter's dimensions; each point then has `groups` {value: usage},
  the `top` values with the most usage over the range by name and the rest under `other`;
  events without the property are counted under `(none)`.
- `top`: how many dimension values to name, 1-100, default 25.

Decimal values are strings (exact); `max` and `latest` of an empty bucket are null. `total` is
exact over the range: for `unique_count` the distinct values over the whole range, never a sum
of the buckets.

Errors are {"code", "message", "errors"}: 400 `missing_parameter`, `invalid_parameter`,
`invalid_range`, `range_too_large`, `unknown_meter`, `unknown_dimension`; 404 `not_found` for an
unknown account.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from metering import periods, selectors
from metering.api.authentication import HasScope
from metering.api.errors import ApiError
from metering.api.serializers import ErrorSerializer
from metering.decimals import decimal_text
from metering.models import Account, Meter
from metering.rollup_selectors import (
    MAX_POINTS,
    UnknownDimension,
    UsageRangeError,
    UsageSeries,
    group_label,
    usage_series,
)

DEFAULT_TOP = 25
MAX_TOP = 100
GRANULARITIES = ("day", "hour")
_SPACE_FOR_PLUS = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


def _bad(code: str, message: str, field: str | None = None) -> ApiError:
    errors = [{"field": field, "code": code, "message": message}] if field else []
    return ApiError(status.HTTP_400_BAD_REQUEST, code, message, errors)


def decimal_str(value: Decimal | None) -> str | None:
    """Exact, without exponent or trailing zeros: 1.500000000000 -> "1.5", 1E+2 -> "100"."""
    return None if value is None else decimal_text(value)


def _parse_bound(raw: str, field: str) -> date | datetime:
    raw = raw.strip()
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        # A bare "+" in a query string arrives as a space.
        instant = datetime.fromisoformat(_SPACE_FOR_PLUS.sub(r"\1+\2", raw))
    except ValueError:
        raise _bad(
            "invalid_parameter",
            f"'{field}' must be a date (2024-05-01) or an RFC 3339 time "
            f"(2024-05-01T00:00:00Z); got {raw!r}.",
            field,
        ) from None
    if instant.tzinfo is None:
        raise _bad(
            "invalid_parameter",
            f"'{field}' must carry a UTC offset (Z or +hh:mm); got {raw!r}.",
            field,
        )
    return instant.astimezone(UTC)


def _as_local_day(value: date | datetime, field: str, tz: str) -> date:
    if not isinstance(value, datetime):
        return value
    day = periods.local_date(value, tz)
    if periods.day_start_utc(day, tz) != value:
        raise _bad(
            "invalid_range",
            f"A daily series starts and ends on day boundaries in the account's zone ({tz}): "
            f"give '{field}' as a date, or as the instant a local day starts.",
            field,
        )
    return day


def _as_hour(value: date | datetime, field: str, tz: str) -> datetime:
    instant = periods.day_start_utc(value, tz) if not isinstance(value, datetime) else value
    if periods.hour_floor(instant) != instant:
        shown = instant.isoformat().replace("+00:00", "Z")
        raise _bad(
            "invalid_range",
            f"An hourly series is in whole UTC hours, and '{field}' is {shown}; give an "
            "RFC 3339 time on a whole UTC hour.",
            field,
        )
    return instant


def _resolve_range(params, tz: str) -> tuple[str, date | datetime, date | datetime]:
    granularity = params.get("granularity") or "day"
    if granularity not in GRANULARITIES:
        raise _bad("invalid_parameter", "'granularity' is 'day' or 'hour'.", "granularity")
    bounds = {}
    for field in ("from", "to"):
        raw = params.get(field)
        if not raw:
            raise _bad("missing_parameter", f"'{field}' is required.", field)
        bounds[field] = _parse_bound(raw, field)
    if granularity == "day":
        start = _as_local_day(bounds["from"], "from", tz)
        end = _as_local_day(bounds["to"], "to", tz)
        size, unit = (end - start).days, "days"
    else:
        start = _as_hour(bounds["from"], "from", tz)
        end = _as_hour(bounds["to"], "to", tz)
        size, unit = int((end - start) / periods.HOUR), "hours"
    if end <= start:
        raise _bad("invalid_range", "The range is empty: 'to' must be after 'from'.", "to")
    if size > MAX_POINTS[granularity]:
        if granularity == "day":
            limit = f"A daily series covers at most {MAX_POINTS['day']} days"
            advice = "Ask for a shorter range (several requests for a longer one)."
        else:
            limit = (
                f"An hourly series covers at most {MAX_POINTS['hour']} hours "
                f"({MAX_POINTS['hour'] // 24} days)"
            )
            advice = "Ask for a shorter range, or for granularity=day."
        raise _bad("range_too_large", f"{limit}; this range has {size} {unit}. {advice}", "to")
    return granularity, start, end


def _top(params) -> int:
    raw = params.get("top")
    if raw in (None, ""):
        return DEFAULT_TOP
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_TOP:
        raise _bad("invalid_parameter", f"'top' is a whole number from 1 to {MAX_TOP}.", "top")
    return int(raw)


def _stamp(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def usage_body(account: Account, series: UsageSeries) -> dict:
    daily = series.granularity == "day"
    return {
        "account": account.external_id,
        "meter": series.meter_code,
        "unit": series.unit,
        "aggregation": series.aggregation,
        "timezone": series.timezone,
        "granularity": series.granularity,
        "from": _stamp(series.first_day if daily else series.start),
        "to": _stamp(series.end_day if daily else series.end),
        "starts_at": _stamp(series.start),
        "ends_at": _stamp(series.end),
        "group_by": series.group_by,
        "total": decimal_str(series.total),
        "group_totals": {group_label(g): decimal_str(v) for g, v in series.group_totals.items()},
        "folded": series.folded,
        "series": [
            {
                "start": _stamp(point.day if daily else point.start),
                "value": decimal_str(point.value),
                "groups": {group_label(g): decimal_str(v) for g, v in point.groups.items()},
            }
            for point in series.points
        ],
    }


# --- schema ------------------------------------------------------------------------------------


class UsagePointSerializer(serializers.Serializer):
    start = serializers.CharField(
        help_text="The bucket: a local date for daily series, an RFC 3339 UTC hour for hourly."
    )
    value = serializers.CharField(allow_null=True, help_text="Exact decimal as a string.")
    groups = serializers.DictField(
        child=serializers.CharField(allow_null=True),
        help_text="With group_by: dimension value -> usage in this bucket (`other` for the "
        "rest, `(none)` for events without the property).",
    )


class UsageSerializer(serializers.Serializer):
    account = serializers.CharField(help_text="The account's external id.")
    meter = serializers.CharField()
    unit = serializers.CharField()
    aggregation = serializers.ChoiceField(choices=Meter.Aggregation.choices)
    timezone = serializers.CharField(help_text="The account's IANA zone; days are local days.")
    granularity = serializers.ChoiceField(choices=GRANULARITIES)
    to = serializers.CharField(help_text="End, exclusive: a date (daily) or RFC 3339 time.")
    starts_at = serializers.DateTimeField(help_text="The range's start as a UTC instant.")
    ends_at = serializers.DateTimeField(help_text="The range's end (exclusive), UTC.")
    group_by = serializers.CharField(allow_null=True)
    total = serializers.CharField(
        allow_null=True, help_text="Exact over the range (distinct values for unique_count)."
    )
    group_totals = serializers.DictField(
        child=serializers.CharField(allow_null=True),
        help_text="With group_by: each group's exact total over the range, largest first.",
    )
    folded = serializers.BooleanField(
        help_text="True when the rollup folded some dimension values into `other` (too many "
        "distinct values on a day)."
    )
    series = UsagePointSerializer(many=True)

    def get_fields(self):
        # "from" is a Python keyword, so it cannot be declared as a class attribute.
        fields = super().get_fields()
        ordered = {}
        for name, field in fields.items():
            if name == "to":
                ordered["from"] = serializers.CharField(
                    help_text="Start, inclusive: a date (daily) or RFC 3339 time (hourly)."
                )
            ordered[name] = field
        return ordered


_ERROR_RESPONSES = {
    400: OpenApiResponse(
        ErrorSerializer,
        description="missing_parameter, invalid_parameter, invalid_range, range_too_large, "
        "unknown_meter, unknown_dimension",
    ),
    401: OpenApiResponse(
        ErrorSerializer, description="not_authenticated, invalid_api_key, revoked_api_key"
    ),
    403: OpenApiResponse(ErrorSerializer, description="insufficient_scope"),
    404: OpenApiResponse(ErrorSerializer, description="not_found: no such account"),
}


class AccountUsageView(APIView):
    permission_classes = [HasScope.of("read")]

    @extend_schema(
        operation_id="accounts_usage_retrieve",
        summary="Read an account's usage of a meter",
        description=(
            "A series from the rollups, one point per bucket (empty buckets included), with the "
            "exact total, the unit and the range's boundaries. Daily buckets are days in the "
            "account's time zone; hourly buckets are UTC hours. `to` is exclusive. A daily range "
            f"covers at most {MAX_POINTS['day']} days, an hourly one at most "
            f"{MAX_POINTS['hour']} hours. Scope: `read`."
        ),
        parameters=[
            OpenApiParameter("meter", OpenApiTypes.STR, required=True, description="Meter code."),
            OpenApiParameter(
                "from",
                OpenApiTypes.STR,
                required=True,
                description="Inclusive start: a date (a day in the account's zone) or an RFC "
                "3339 time.",
            ),
            OpenApiParameter(
                "to",
                OpenApiTypes.STR,
                required=True,
                description="Exclusive end: a date or an RFC 3339 time.",
            ),
            OpenApiParameter(
                "granularity", OpenApiTypes.STR, enum=list(GRANULARITIES), default="day"
            ),
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description="One of the meter's dimensions: break each point down by its values.",
            ),
            OpenApiParameter(
                "top",
                OpenApiTypes.INT,
                default=DEFAULT_TOP,
                description=f"With group_by: values named (1-{MAX_TOP}); the rest are `other`.",
            ),
        ],
        responses={200: UsageSerializer, **_ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "Daily API calls by endpoint",
                response_only=True,
                value={
                    "account": "acme",
                    "meter": "api_calls",
                    "unit": "calls",
                    "aggregation": "count",
                    "timezone": "Europe/Berlin",
                    "granularity": "day",
                    "from": "2024-05-01",
                    "to": "2024-05-03",
                    "starts_at": "2024-04-30T22:00:00Z",
                    "ends_at": "2024-05-02T22:00:00Z",
                    "group_by": "endpoint",
                    "total": "1250",
                    "group_totals": {"/v1/search": "1000", "other": "250"},
                    "folded": False,
                    "series": [
                        {
                            "start": "2024-05-01",
                            "value": "700",
                            "groups": {"/v1/search": "600", "other": "100"},
                        },
                        {
                            "start": "2024-05-02",
                            "value": "550",
                            "groups": {"/v1/search": "400", "other": "150"},
                        },
                    ],
                },
            )
        ],
        tags=["accounts"],
    )
    def get(self, request, external_id: str):
        account = selectors.account_get(external_id=external_id)
        if account is None:
            raise exceptions.NotFound(f"No account {external_id!r}.")
        params = request.query_params
        code = params.get("meter")
        if not code:
            raise _bad("missing_parameter", "'meter' (a meter code) is required.", "meter")
        meter = selectors.meter_get(code=code)
        if meter is None:
            raise _bad("unknown_meter", f"No meter {code!r}.", "meter")
        group_by = params.get("group_by") or None
        if group_by is not None and group_by not in (meter.dimensions or []):
            known = ", ".join(meter.dimensions or []) or "none"
            raise _bad(
                "unknown_dimension",
                f"Meter {meter.code} has no dimension {group_by!r} (its dimensions: {known}).",
                "group_by",
            )
        granularity, start, end = _resolve_range(params, account.timezone)
        top = _top(params)
        try:
            series = usage_series(
                account=account,
                meter=meter,
                start=start,
                end=end,
                granularity=granularity,
                group_by=group_by,
                top=top,
            )
        except UnknownDimension as exc:  # checked above; kept for the selector's own rules
            raise _bad("unknown_dimension", str(exc), "group_by") from None
        except UsageRangeError as exc:
            raise _bad("invalid_range", str(exc), "to") from None
        return Response(usage_body(account, series))
