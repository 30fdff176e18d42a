"""An event's value checked against its meter (numeric or unique), the row to insert, and the
late cutoff."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from metering import exact_json
from metering.exact_json import EXACT
from metering.services.ingest.common import (
    _DECIMAL_PLACES,
    _NUMERIC_STRING,
    _ONE,
    MAX_DECIMAL_PLACES,
    MAX_INTEGER_DIGITS,
    MAX_TEXT_LENGTH,
    ParsedEvent,
    _error,
)

# --- values: need the meter -----------------------------------------------------------------


def _numeric_value(raw: Any) -> Decimal | tuple[str, str]:
    if raw is None:
        return ("missing_value", "is required by this meter")
    if isinstance(raw, bool):
        return ("invalid_value", "must be a number, not a boolean")
    try:
        if isinstance(raw, int):
            value = Decimal(raw)
        elif isinstance(raw, Decimal):
            value = raw
        elif isinstance(raw, float):
            value = Decimal(repr(raw))
        elif isinstance(raw, str) and _NUMERIC_STRING.match(raw):
            value = Decimal(raw)
        else:
            return ("invalid_value", "must be a number or a numeric string")
    except (InvalidOperation, ValueError):
        return ("invalid_value", "must be a number or a numeric string")
    if not value.is_finite():
        return ("invalid_value", "must be a finite number")
    if value:
        if value.adjusted() >= MAX_INTEGER_DIGITS:
            return ("value_out_of_range", f"must be below 10^{MAX_INTEGER_DIGITS}")
        if value.quantize(_DECIMAL_PLACES, context=EXACT) != value:
            return ("value_too_precise", f"must have at most {MAX_DECIMAL_PLACES} decimal places")
    return value


def _unique_value(raw: Any) -> str | tuple[str, str]:
    if raw is None or raw == "":
        return ("missing_value", "is required by this meter")
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, str):
        text = raw
    elif isinstance(raw, int | Decimal):
        text = exact_json.canonical_number(raw)
    elif isinstance(raw, float):
        text = exact_json.canonical_number(Decimal(repr(raw)))
    else:
        return ("invalid_value", "must be a string, number or boolean")
    if len(text) > MAX_TEXT_LENGTH:
        return ("value_too_long", f"must be at most {MAX_TEXT_LENGTH} characters")
    return text


@dataclass(slots=True)
class _MeterInfo:
    id: int
    aggregation: str
    value_property: str
    active: bool


def _row_for(event: ParsedEvent, account_id: int, meter: _MeterInfo, late_before: datetime):
    """The insert row for an event, or an error list when its value does not fit the meter."""
    aggregation = meter.aggregation
    value: Any = None
    unique = ""
    if aggregation == "count":
        value = _ONE
    else:
        prop = meter.value_property
        raw = event.properties.get(prop)
        if aggregation == "unique_count":
            parsed = _unique_value(raw)
            if isinstance(parsed, tuple):
                return [_error(f"properties.{prop}", parsed[0], f"{prop} {parsed[1]}.")]
            unique = parsed
        else:
            parsed_value = _numeric_value(raw)
            if isinstance(parsed_value, tuple):
                return [_error(f"properties.{prop}", parsed_value[0], f"{prop} {parsed_value[1]}.")]
            value = orjson.Fragment(str(parsed_value).encode())
    # In metering.ingest_sql.EVENT_ROW_FIELDS order.
    return (
        account_id,
        meter.id,
        event.transaction_id,
        event.source,
        event.occurred_at,
        value,
        unique,
        orjson.Fragment(event.properties_json),
        event.content_hash.hex(),
        event.occurred_at < late_before,
        event.received_at,
    )


def late_cutoff(now: datetime) -> datetime:
    """Events that occurred before this instant are late: the start of the previous UTC day."""
    return datetime.combine(now.astimezone(UTC).date() - timedelta(days=1), time(0), tzinfo=UTC)
