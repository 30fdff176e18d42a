"""OpenAPI post-processing: what every authenticated operation shares, documented once."""

from __future__ import annotations

RATE_LIMITED = {
    "description": (
        "rate_limited: this API key sent more requests than its rate allows (API_RATE_INGEST "
        "for the event endpoints, API_RATE_READ for the rest); retry after Retry-After seconds."
    ),
    "headers": {
        "Retry-After": {
            "description": "Seconds until the key's current window ends.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def document_rate_limits(result, generator, request, public):
    """drf-spectacular hook: a 429 with Retry-After on every operation that takes an API key."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and operation.get("security"):
                operation.setdefault("responses", {}).setdefault("429", RATE_LIMITED)
    return result
