"""Backfill usage events from a JSON-lines or CSV file through the ingestion service.

JSON lines: one event per line, in the chosen format (Lago by default, or CloudEvents).
CSV: a header row; plain columns are top-level fields (Lago: transaction_id,
external_customer_id, code, timestamp; CloudEvents: id, source, subject, type, time), and the
event's properties come from `properties.<key>` columns and/or a `properties` column holding a
JSON object (for CloudEvents: `data.<key>` / `data`). Empty cells are left out. A Unix
timestamp in a CSV cell is sent as a number.

A line that cannot be parsed is reported as rejected with its line number; it never stops the
run. Sending the same file twice stores nothing new (everything comes back as duplicate).
"""

from __future__ import annotations

import csv
import gzip
import io
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from metering import exact_json
from metering.services.ingest import events_ingest
from metering.services.table_stats import event_tables_analyze

STATUSES = ("accepted", "duplicate", "quarantined", "conflict", "rejected")
# Columns holding the event's payload object, per format.
PAYLOAD_COLUMN = {"lago": "properties", "cloudevents": "data"}
TIMESTAMP_COLUMN = {"lago": "timestamp", "cloudevents": "time"}


class LineError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def file_type_guess(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] == ".csv":
        return "csv"
    return "jsonl"


def jsonl_items(handle) -> Iterator[tuple[int, dict | LineError]]:
    for line_number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            # Exact: a fractional number becomes a Decimal, never a float.
            item = exact_json.loads(line)
        except exact_json.JSONError as exc:
            yield line_number, LineError("malformed_json", f"Not valid JSON: {exc}")
            continue
        if not isinstance(item, dict):
            yield line_number, LineError("not_an_object", "Each line must be one JSON object.")
            continue
        yield line_number, item


def csv_row_to_item(row: dict, fmt: str) -> dict:
    if None in row:
        raise LineError("too_many_columns", "The row has more cells than the header.")
    payload_column = PAYLOAD_COLUMN[fmt]
    item: dict = {}
    payload: dict = {}
    for column, cell in row.items():
        if cell is None or cell == "":
            continue
        if column == payload_column:
            try:
                parsed = exact_json.loads(cell)
            except exact_json.JSONError as exc:
                raise LineError(
                    "malformed_json", f"The {payload_column} cell is not valid JSON: {exc}"
                ) from None
            if not isinstance(parsed, dict):
                raise LineError("not_an_object", f"The {payload_column} cell must be an object.")
            payload = {**parsed, **payload}
        elif column.startswith(payload_column + "."):
            payload[column[len(payload_column) + 1 :]] = cell
        elif column == TIMESTAMP_COLUMN[fmt] and cell.strip().lstrip("-").isdigit():
            item[column] = int(cell)
        else:
            item[column] = cell
    if payload:
        item[payload_column] = payload
    return item


def csv_items(handle, fmt: str) -> Iterator[tuple[int, dict | LineError]]:
    reader = csv.DictReader(handle)
    try:
        for row in reader:
            try:
                yield reader.line_num, csv_row_to_item(row, fmt)
            except LineError as exc:
                yield reader.line_num, exc
    except csv.Error as exc:
        yield reader.line_num, LineError("malformed_csv", str(exc))


def _error_text(errors) -> str:
    if not errors:
        return ""
    if isinstance(errors, dict):
        errors = [{"field": key, **_as_dict(value)} for key, value in errors.items()]
    parts = []
    for error in errors:
        if isinstance(error, dict):
            code = error.get("code", "")
            where = error.get("field") or error.get("path") or ""
            message = error.get("message", "")
            text = f"{where}: {code}" if where else code
            parts.append(f"{text} ({message})" if message else text)
        else:
            parts.append(str(error))
    return "; ".join(parts)


def _as_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {"code": ", ".join(map(str, value))}
    return {"code": str(value)}


class Command(BaseCommand):
    help = "Backfill usage events from a JSON-lines or CSV file (see the module docstring)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", choices=("lago", "cloudevents"), default="lago")
        parser.add_argument(
            "--type", choices=("jsonl", "csv"), default=None, help="Default: by extension."
        )
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument(
            "--show-errors", type=int, default=10, help="How many errors to list (default 10)."
        )
        parser.add_argument(
            "--fail-on-error",
            action="store_true",
            help="Exit non-zero if any line was rejected or conflicted.",
        )

    def handle(self, *args, path: Path, batch_size: int, show_errors: int, **options):
        fmt = options["format"]
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        file_type = options["type"] or file_type_guess(path)
        started = time.monotonic()
        with _open_text(path) as handle:
            total_lines = sum(1 for _ in handle)
        counts: Counter = Counter()
        errors: list[tuple[int, str, str]] = []

        def record(line_number: int, status: str, detail: str) -> None:
            counts[status] += 1
            if status in {"rejected", "conflict"} and len(errors) < show_errors:
                errors.append((line_number, status, detail))

        pending: list[tuple[int, dict]] = []

        def flush() -> None:
            if not pending:
                return
            result = events_ingest(items=[item for _line, item in pending], fmt=fmt)
            for item_result in result.results:
                line_number = pending[item_result.index][0]
                record(line_number, item_result.status, _error_text(item_result.errors))
            pending.clear()

        bar = tqdm(total=total_lines, unit="line", desc=path.name, disable=options["verbosity"] < 1)
        last_line = 0
        with _open_text(path) as handle:
            items = csv_items(handle, fmt) if file_type == "csv" else jsonl_items(handle)
            for line_number, item in items:
                bar.update(line_number - last_line)
                last_line = line_number
                if isinstance(item, LineError):
                    record(line_number, "rejected", f"{item.code} ({item.message})")
                    continue
                pending.append((line_number, item))
                if len(pending) >= batch_size:
                    flush()
            flush()
        # Fresh statistics, so the admin's estimated counts and the query plans fit the new rows.
        event_tables_analyze()
        bar.update(max(0, total_lines - last_line))
        bar.close()

        elapsed = time.monotonic() - started
        processed = sum(counts.values())
        self.stdout.write(
            f"Processed {processed} events from {path} ({file_type}, {fmt} format) "
            f"in {elapsed:.1f}s."
        )
        self.stdout.write("  " + ", ".join(f"{status} {counts[status]}" for status in STATUSES))
        if errors:
            self.stdout.write(f"First {len(errors)} errors:")
            for line_number, status, detail in errors:
                self.stdout.write(f"  line {line_number}: {status}: {detail}")
        failed = counts["rejected"] + counts["conflict"]
        if failed and options["fail_on_error"]:
            raise CommandError(f"{failed} events were rejected or conflicted.", returncode=1)
