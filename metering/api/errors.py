"""JSON errors with a stable machine-readable `code` and a human `message`."""

from __future__ import annotations

import math

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def error_body(code: str, message: str, errors=None) -> dict:
    return {"code": code, "message": message, "errors": errors or []}


class ApiError(exceptions.APIException):
    """An error with our own status, code and (optional) field errors."""

    def __init__(self, status_code: int, code: str, message: str, errors: list | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.error_code = code
        self.errors = errors or []


def body_too_large(limit: int) -> ApiError:
    return ApiError(
        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        "body_too_large",
        f"The request body is larger than {limit} bytes. Send fewer events per request.",
    )


def exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return Response(
            error_body(exc.error_code, str(exc.detail), exc.errors), status=exc.status_code
        )
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, math.ceil(exc.wait or 1))
        return Response(
            error_body(
                "rate_limited",
                f"Too many requests for this API key; retry in {wait} s.",
            ),
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, exceptions.ParseError):
        # DRF's parsers (account and meter bodies) speak of "parse_error"; we say what it is.
        return Response(
            error_body("malformed_json", str(exc.detail)), status=status.HTTP_400_BAD_REQUEST
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException):
        detail = exc.detail
        code = exc.get_codes() if not isinstance(detail, dict | list) else None
        if isinstance(detail, dict | list):
            return Response(
                error_body(
                    "invalid", "The request is not valid.", _flatten(exc.get_full_details())
                ),
                status=response.status_code,
                headers=_headers(response),
            )
        return Response(
            error_body(str(code), str(detail)),
            status=response.status_code,
            headers=_headers(response),
        )
    return response


def _headers(response) -> dict:
    return {k: v for k, v in response.items() if k in {"WWW-Authenticate", "Retry-After", "Allow"}}


def _flatten(details, path: str = "") -> list[dict]:
    out: list[dict] = []
    if isinstance(details, dict) and "code" in details and "message" in details:
        return [
            {"field": path or None, "code": details["code"], "message": str(details["message"])}
        ]
    if isinstance(details, dict):
        for key, value in details.items():
            out.extend(_flatten(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(details, list):
        for idx, value in enumerate(details):
            if isinstance(value, dict) and "code" in value and "message" in value:
                out.extend(_flatten(value, path))
            else:
                out.extend(_flatten(value, f"{path}[{idx}]"))
    return out
