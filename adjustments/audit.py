"""The audit log: capture, chain, verify and export.

Capture: every history-tracked model writes a simple-history row on each change (with the
acting user and the reason); `audit_history_record` listens to simple-history's
`post_create_historical_record` signal for all of them and appends one AuditEntry in the same
transaction, with the changed fields before and after (this history row against the previous
one of the same object). So adding HistoricalRecords to a new model is all it takes for it to
be audited. History written in bulk (`bulk_history_create`, used for quarantined events on the
ingest path) sends no signal and is not mirrored here.

"From where": a context variable, set by `AuditOriginMiddleware` for web requests (the admin
or the API, with the path and client IP), by Celery's task_prerun/task_postrun signals for
tasks (the task's name) and by `audit_origin(...)` wherever code wants to say it; without
one, a change comes from the shell or a management command ("shell", with the command line
when it is manage.py).

Chain: each row's `hash` is sha256(prev_hash + canonical JSON of the row's content) and its
`seq` the previous row's + 1. Both are taken under a transaction-level advisory lock
(AUDIT_LOCK_KEY), so two writers cannot read the same "last row": the second waits until the
first commits (or rolls back, leaving nothing). The cost: transactions that write history take
turns from their first history row to their commit. Keep them short; a deadlock this creates is
an OperationalError, which tasks already retry.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import datetime as dt
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.core.exceptions import FieldDoesNotExist
from django.db import connections, transaction
from django.utils import timezone

from adjustments.models import AuditEntry

# pg_advisory_xact_lock(AUDIT_LOCK_KEY): one writer at a time extends the chain.
AUDIT_LOCK_KEY = 0x6175_6469_745F_6C67  # "audit_lg"
GENESIS_HASH = "0" * 64

# Fields whose values never go into the log (their change still shows, as "[redacted]").
_REDACTED_PARTS = ("secret", "password", "key_hash", "token")
REDACTED = "[redacted]"


# --- from where --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    origin: str
    detail: str = ""
    request: object | None = None


_origin: contextvars.ContextVar[Origin | None] = contextvars.ContextVar(
    "meterops_audit_origin", default=None
)


@contextlib.contextmanager
def audit_origin(origin: str, detail: str = "", request=None) -> Iterator[None]:
    """Changes made inside come from `origin` (admin, api, shell, task)."""
    token = _origin.set(Origin(origin, detail[:500], request))
    try:
        yield
    finally:
        _origin.reset(token)


def _client_ip(request) -> str:
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    return forwarded.split(",")[0].strip() or request.META.get("REMOTE_ADDR", "")


class AuditOriginMiddleware:
    """Changes made while serving a request come from the API (/api/...) or the admin (the rest
    of the site), with the method, path and client IP."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        origin = AuditEntry.Origin.API if request.path.startswith("/api/") else "admin"
        detail = f"{request.method} {request.path} from {_client_ip(request)}"
        with audit_origin(origin, detail, request):
            return self.get_response(request)


_task_tokens: dict[str, contextvars.Token] = {}


def _task_started(task_id=None, task=None, **_kwargs) -> None:
    _task_tokens[task_id] = _origin.set(Origin(AuditEntry.Origin.TASK, task.name if task else ""))


def _task_finished(task_id=None, **_kwargs) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        with contextlib.suppress(ValueError, RuntimeError):  # set in another context
            _origin.reset(token)


def _default_origin() -> Origin:
    argv = sys.argv or [""]
    if argv[0].endswith("manage.py") and len(argv) > 1:
        return Origin(AuditEntry.Origin.SHELL, " ".join(["manage.py", *argv[1:3]]))
    return Origin(AuditEntry.Origin.SHELL, "")


def current_origin() -> Origin:
    return _origin.get() or _default_origin()


# --- capture -----------------------------------------------------------------------------------

_ACTIONS = {"+": "created", "~": "changed", "-": "deleted"}


def _json_safe(value):
    """The value as jsonb will give it back, so the hash over it is reproducible: decimals,
    dates, times, UUIDs and floats (also inside JSON values: jsonb would rewrite 1e20) as their
    text, NUL characters dropped (jsonb refuses them)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "")
    return json.loads(json.dumps(value, default=str).replace("\\u0000", ""), parse_float=str)


def _tracked(history_instance) -> list[str]:
    """Tracked attnames, minus auto_now stamps (they change on every save and say nothing)."""
    names = []
    for field in history_instance.tracked_fields:
        if getattr(field, "auto_now", False):
            continue
        names.append(field.attname)
    return names


def _value(name: str, value):
    if any(part in name for part in _REDACTED_PARTS):
        return REDACTED
    return _json_safe(value)


def _previous(history_instance):
    model = type(history_instance)
    pk_name = history_instance.instance_type._meta.pk.attname
    return (
        model._default_manager.filter(
            **{pk_name: getattr(history_instance, pk_name)},
            history_id__lt=history_instance.history_id,
        )
        .order_by("-history_id")
        .first()
    )


def _before_after(history_instance) -> tuple[dict, dict]:
    names = _tracked(history_instance)
    kind = history_instance.history_type
    if kind == "+":
        return {}, {n: _value(n, getattr(history_instance, n)) for n in names}
    if kind == "-":
        return {n: _value(n, getattr(history_instance, n)) for n in names}, {}
    previous = _previous(history_instance)
    if previous is None:
        # History started after the record (or was pruned): only the current values are known.
        return {}, {n: _value(n, getattr(history_instance, n)) for n in names}
    before, after = {}, {}
    for name in names:
        old, new = getattr(previous, name), getattr(history_instance, name)
        if old != new:
            before[name], after[name] = _value(name, old), _value(name, new)
    return before, after


def _account_id(instance_type, history_instance) -> int | None:
    if instance_type._meta.label == "metering.Account":
        return history_instance.id
    value = getattr(history_instance, "account_id", None)
    return value if isinstance(value, int) else None


def _actor(history_user, origin: Origin) -> tuple[str, int | None, str]:
    if history_user is not None:
        return AuditEntry.ActorKind.USER, history_user.pk, history_user.get_username()
    # An API request: DRF puts the key's user on the Django request too; the key is not a
    # Django user, so simple-history records no user for it.
    key = getattr(getattr(origin.request, "user", None), "key", None)
    if key is not None:
        return AuditEntry.ActorKind.API_KEY, None, f"API key {key.name} ({key.prefix}…)"[:300]
    return AuditEntry.ActorKind.SYSTEM, None, "system"


def canonical_json(content: dict) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev_hash: str, content: dict) -> str:
    return hashlib.sha256((prev_hash + canonical_json(content)).encode()).hexdigest()


def audit_entry_append(*, using: str = "default", **fields) -> AuditEntry:
    """Append one entry to the chain, in the caller's transaction (or its own)."""
    with transaction.atomic(using=using, savepoint=False):
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])
            # A new statement: under READ COMMITTED it sees the row the last holder committed.
            cursor.execute(
                f"SELECT seq, hash FROM {AuditEntry._meta.db_table} ORDER BY seq DESC LIMIT 1"
            )
            last = cursor.fetchone()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        entry = AuditEntry(
            seq=seq, created_at=timezone.now().astimezone(dt.UTC), prev_hash=prev_hash, **fields
        )
        entry.hash = entry_hash(prev_hash, entry.content())
        entry.save(using=using, force_insert=True)
    return entry


def audit_history_record(
    sender, instance, history_instance, history_user=None, using=None, **_kwargs
) -> None:
    """post_create_historical_record: mirror one simple-history row into the audit log."""
    origin = current_origin()
    before, after = _before_after(history_instance)
    kind, user_id, label = _actor(history_user, origin)
    instance_type = history_instance.instance_type
    audit_entry_append(
        using=using or "default",
        actor_kind=kind,
        actor_user_id=user_id,
        actor_label=label,
        app_label=instance_type._meta.app_label,
        model=instance_type._meta.model_name,
        object_pk=str(getattr(history_instance, instance_type._meta.pk.attname))[:255],
        account_id=_account_id(instance_type, history_instance),
        action=_ACTIONS.get(history_instance.history_type, "changed"),
        reason=history_instance.history_change_reason or "",
        origin=origin.origin,
        origin_detail=origin.detail,
        before=before,
        after=after,
        history_id=history_instance.history_id,
    )


def audit_catch_up(*, batch: int = 2000) -> int:
    """Mirror the history rows no signal announced: simple-history's `bulk_history_create`
    sends none (quarantined events on ingest and their replays, the mismatches a
    reconciliation run writes), so without this they would be in the history tables and not
    in the audit log. Each such row once, in history order, marked as caught up; returns how
    many were added. Runs every five minutes (`adjustments-audit-catch-up`); two runs at once
    take turns on the chain's lock."""
    from simple_history.exceptions import NotHistoricalModelError
    from simple_history.models import registered_models
    from simple_history.utils import get_history_manager_for_model

    added = 0
    for model in list(registered_models.values()):
        try:
            history = get_history_manager_for_model(model)
        except NotHistoricalModelError:  # a many-to-many through model
            continue
        meta = model._meta
        while True:
            with transaction.atomic():
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])
                known = AuditEntry.objects.filter(
                    app_label=meta.app_label, model=meta.model_name, history_id__isnull=False
                ).values("history_id")
                rows = list(
                    history.model.objects.exclude(history_id__in=known)
                    .select_related("history_user")
                    .order_by("history_id")[:batch]
                )
                here = current_origin().origin
                with audit_origin(here, "caught up: history written in bulk, without a signal"):
                    for row in rows:
                        audit_history_record(
                            sender=model,
                            instance=None,
                            history_instance=row,
                            history_user=row.history_user,
                        )
            added += len(rows)
            if len(rows) < batch:
                break
    return added


def audit_capture_connect() -> None:
    """Called once from AdjustmentsConfig.ready."""
    from celery.signals import task_postrun, task_prerun
    from simple_history.signals import post_create_historical_record

    post_create_historical_record.connect(
        audit_history_record, dispatch_uid="meterops_audit_history_record"
    )
    task_prerun.connect(_task_started, dispatch_uid="meterops_audit_task_started", weak=False)
    task_postrun.connect(_task_finished, dispatch_uid="meterops_audit_task_finished", weak=False)


# --- verify ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    message: str


def audit_chain_verify(
    *, chunk_size: int = 2000, progress=None, progress_every: int = 100_000
) -> tuple[int, ChainProblem | None]:
    """Walk the chain in order: (rows checked, the first problem or None).

    A problem is a gap in seq (a deleted row), a prev_hash that is not the previous row's hash
    (a row deleted, inserted or moved), or a hash that does not match the row's content (an
    edited row). Deleting rows at the very end cannot be seen from the chain alone.
    """
    expected_seq, expected_prev = 1, GENESIS_HASH
    checked = 0
    rows = AuditEntry.objects.order_by("seq").iterator(chunk_size=chunk_size)
    for entry in rows:
        if entry.seq != expected_seq:
            missing = (
                f"rows {expected_seq}..{entry.seq - 1} are missing"
                if entry.seq > expected_seq
                else f"row {entry.seq} is out of order"
            )
            return checked, ChainProblem(entry.seq, f"gap before row {entry.seq}: {missing}")
        if entry.prev_hash != expected_prev:
            return checked, ChainProblem(
                entry.seq,
                f"row {entry.seq} does not follow row {entry.seq - 1} "
                "(its prev_hash is not that row's hash: a row was removed, inserted or moved)",
            )
        if entry_hash(entry.prev_hash, entry.content()) != entry.hash:
            return checked, ChainProblem(
                entry.seq, f"row {entry.seq} was edited (its content no longer matches its hash)"
            )
        checked += 1
        expected_seq, expected_prev = entry.seq + 1, entry.hash
        if progress is not None and checked % progress_every == 0:
            progress(checked)
    return checked, None


# --- export ------------------------------------------------------------------------------------

EXPORT_FIELDS = (
    "seq",
    "created_at",
    "actor_kind",
    "actor_user_id",
    "actor_label",
    "app_label",
    "model",
    "object_pk",
    "account_id",
    "action",
    "reason",
    "origin",
    "origin_detail",
    "before",
    "after",
    "history_id",
    "prev_hash",
    "hash",
)
EXPORT_CHUNK = 2000


def audit_export_rows(queryset) -> Iterator[dict]:
    """The rows as plain dicts, in chain order, read in chunks (memory stays flat)."""
    for values in queryset.order_by("seq").values(*EXPORT_FIELDS).iterator(chunk_size=EXPORT_CHUNK):
        values["created_at"] = values["created_at"].astimezone(dt.UTC).isoformat()
        yield values


def audit_export_csv(rows: Iterable[dict]) -> Iterator[str]:
    """CSV lines (header first); before/after as JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(EXPORT_FIELDS)
    yield flush()
    for row in rows:
        writer.writerow(
            [
                canonical_json(row[f])
                if f in ("before", "after")
                else ("" if row[f] is None else row[f])
                for f in EXPORT_FIELDS
            ]
        )
        yield flush()


def audit_export_jsonl(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n"


# --- reads: record types and the account timeline -----------------------------------------------


def audit_record_types() -> list[tuple[str, str]]:
    """("app_label.model", "App: verbose name") of every history-tracked model."""
    from django.apps import apps

    types = []
    for model in apps.get_models():
        manager = getattr(model, "history", None)
        if manager is None or not hasattr(model, "_meta") or getattr(model, "instance_type", None):
            continue
        if not hasattr(manager, "model"):
            continue
        opts = model._meta
        types.append(
            (f"{opts.app_label}.{opts.model_name}", f"{opts.app_label}: {opts.verbose_name}")
        )
    return sorted(types, key=lambda t: t[1])


@dataclass(frozen=True)
class TimelineChange:
    field: str
    before: str
    after: str


@dataclass(frozen=True)
class TimelineItem:
    seq: int
    action: str
    at_utc: str
    at_local: str
    actor: str
    origin: str
    sentence: str
    reason: str
    changes: list[TimelineChange]


def _plain(value) -> str:
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, dict | list):
        return canonical_json(value)
    return str(value)


def _field_label(model, name: str) -> str:
    if model is None:
        return name
    try:
        return str(model._meta.get_field(name).verbose_name)
    except FieldDoesNotExist:  # a field since removed from the model: its stored name will do
        return name


def _foreign_key(model, name: str):
    """The model a foreign key column (by attname) points at, or None."""
    if model is None:
        return None
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:  # a field since removed
        return None
    if getattr(field, "many_to_one", False) and field.attname == name:
        return field.related_model
    return None


def _related_names(entries, models) -> dict:
    """{(related model, id): str(row)} for every foreign key value the entries show: one query
    per related model, so "assignee: #7" reads "assignee: maya (#7)"."""
    wanted: dict = {}
    for entry in entries:
        for values in (entry.before, entry.after):
            for name, value in values.items():
                related = _foreign_key(models[entry], name)
                if related is not None and isinstance(value, int):
                    wanted.setdefault(related, set()).add(value)
    names = {}
    for related, ids in wanted.items():
        for pk, row in related._default_manager.in_bulk(list(ids)).items():
            names[(related, pk)] = str(row)
    return names


def audit_account_timeline(
    *,
    account_id: int,
    timezone_name: str = "UTC",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    limit: int = 500,
) -> list[TimelineItem]:
    """The account's audit entries (the account itself, its subscriptions and periods, alerts,
    mismatches, adjustments: every record that names the account), oldest first, the newest
    `limit` of them, each said in plain words. Times in UTC and in the account's zone."""
    from zoneinfo import ZoneInfo

    from django.apps import apps

    zone = ZoneInfo(timezone_name)
    queryset = AuditEntry.objects.for_account(account_id)
    if start is not None:
        queryset = queryset.filter(created_at__gte=start)
    if end is not None:
        queryset = queryset.filter(created_at__lt=end)
    entries = list(queryset.order_by("-seq")[:limit])
    entries.reverse()
    models = {}
    for entry in entries:
        try:
            models[entry] = apps.get_model(entry.app_label, entry.model)
        except LookupError:  # a model since removed: its stored names will do
            models[entry] = None
    names = _related_names(entries, models)

    def plain(model, name, value) -> str:
        related = _foreign_key(model, name)
        if related is not None and value is not None:
            label = names.get((related, value))
            return f"{label} (#{value})" if label else f"#{value}"
        return _plain(value)

    items = []
    for entry in entries:
        model = models[entry]
        noun = str(model._meta.verbose_name) if model else entry.model
        what = f"{noun} {entry.object_pk}"
        changes: list[TimelineChange] = []
        if entry.action == AuditEntry.Action.CHANGED:
            for name in entry.after:
                changes.append(
                    TimelineChange(
                        _field_label(model, name),
                        plain(model, name, entry.before.get(name)),
                        plain(model, name, entry.after.get(name)),
                    )
                )
            sentence = f"{entry.actor_label} changed {what}"
            if not changes:
                sentence += " (no field changed)"
        elif entry.action == AuditEntry.Action.CREATED:
            sentence = f"{entry.actor_label} created {what}"
            changes = [
                TimelineChange(_field_label(model, name), "", plain(model, name, value))
                for name, value in entry.after.items()
            ]
        else:
            sentence = f"{entry.actor_label} deleted {what}"
            changes = [
                TimelineChange(_field_label(model, name), plain(model, name, value), "")
                for name, value in entry.before.items()
            ]
        created = entry.created_at.astimezone(dt.UTC)
        items.append(
            TimelineItem(
                seq=entry.seq,
                action=entry.action,
                at_utc=created.strftime("%Y-%m-%d %H:%M:%S UTC"),
                at_local=created.astimezone(zone).strftime(f"%Y-%m-%d %H:%M {timezone_name}"),
                actor=entry.actor_label,
                origin=entry.get_origin_display(),
                sentence=sentence,
                reason=entry.reason,
                changes=changes,
            )
        )
    return items
