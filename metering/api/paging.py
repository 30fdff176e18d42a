"""Keyset paging for the API's lists: `limit` and a `next` URL that carries a cursor.

Every list answers `{"results": [...], "next": URL or null}`. A page is read as `limit + 1`
rows of a queryset already filtered past the cursor and ordered; the extra row only says that
there is a next page, whose URL is this request's with the cursor of the page's last row.
Lives here, the lowest API layer, so that every app's API pages the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rest_framework import status

from metering.api.errors import ApiError

T = TypeVar("T")


def invalid_parameter(name: str, message: str) -> ApiError:
    """A 400 `invalid_parameter` naming the query parameter in `errors`."""
    return ApiError(
        status.HTTP_400_BAD_REQUEST,
        "invalid_parameter",
        message,
        [{"field": name, "code": "invalid_parameter", "message": message}],
    )


def refuse_unknown_parameters(request, allowed: Sequence[str]) -> None:
    """A 400 `invalid_parameter` for a query parameter the operation does not document (a
    misspelt filter would otherwise widen the answer silently, as Stripe's API refuses an
    unknown parameter)."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise invalid_parameter(
            unknown[0], f"Unknown query parameter {unknown[0]!r}; known: {', '.join(allowed)}."
        )


def page_limit(request, *, default: int, maximum: int, name: str = "limit") -> int:
    """The `limit` query parameter: a whole number from 1 to `maximum`, else a 400."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise invalid_parameter(name, f"{name} is a whole number from 1 to {maximum}.")
    return value


def keyset_page(
    request,
    rows: Sequence[T] | Any,
    *,
    limit: int,
    cursor_param: str,
    cursor_of: Callable[[T], str | int],
) -> tuple[list[T], str | None]:
    """The first `limit` rows and the URL of the next page (None on the last)."""
    page = list(rows[: limit + 1])
    if len(page) <= limit:
        return page, None
    page = page[:limit]
    query = request.query_params.copy()
    query[cursor_param] = str(cursor_of(page[-1]))
    return page, request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
