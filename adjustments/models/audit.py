"""The append-only, hash-chained audit log.

One row per state change of a history-tracked business record (every model with
django-simple-history's HistoricalRecords), written in the same transaction as the change
(adjustments.audit captures it from simple-history's post_create_historical_record signal).

Immutability, in the database:
- A trigger (django-pgtrigger `Protect`) refuses every UPDATE and DELETE on the table, whoever
  sends it (the ORM, raw SQL, a psql session). TRUNCATE is deliberately left possible: the test
  runner empties tables with it between tests, and a role that may TRUNCATE (or disable the
  trigger) is the table's owner anyway. That is what the chain below is for.
- Rows are chained: `seq` counts 1, 2, 3, ... without gaps, and `hash` is
  sha256(previous row's hash + canonical JSON of this row's content). A row edited, deleted,
  inserted or reordered by someone who got past the trigger breaks the chain, and
  `manage.py audit_verify` names the first broken row. Rows are numbered and chained under a
  transaction-level advisory lock, so concurrent writers keep one chain.

No foreign keys: the log names records by app label, model and primary key (as text), so
deleting a record elsewhere keeps working and the log keeps what it was.
"""

from __future__ import annotations

import pgtrigger
from django.db import models

__all__ = ["AuditEntry"]


class AuditEntryQuerySet(models.QuerySet):
    def for_account(self, account_id: int):
        return self.filter(account_id=account_id)


class AuditEntry(models.Model):
    class Action(models.TextChoices):
        CREATED = "created", "created"
        CHANGED = "changed", "changed"
        DELETED = "deleted", "deleted"

    class Origin(models.TextChoices):
        ADMIN = "admin", "Admin"
        API = "api", "API"
        SHELL = "shell", "Shell or command"
        TASK = "task", "Celery task"

    class ActorKind(models.TextChoices):
        USER = "user", "Staff user"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"

    # Our own gapless number (the chain's order): the previous row's seq + 1, taken under the
    # advisory lock. A rolled-back transaction leaves no hole, unlike a database sequence.
    seq = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField(db_index=True, help_text="UTC")

    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    # The user's id at the time (no foreign key: deleting a user must not touch the log).
    actor_user_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    # The username, the API key's "name (prefix…)", or "system".
    actor_label = models.CharField(max_length=300)

    app_label = models.CharField(max_length=100)
    model = models.CharField(max_length=100)
    object_pk = models.CharField(max_length=255)
    account_id = models.BigIntegerField(null=True, blank=True)
    action = models.CharField(max_length=8, choices=Action.choices)
    reason = models.TextField(blank=True)

    origin = models.CharField(max_length=8, choices=Origin.choices)
    # The request path and client IP, the task name, or the command.
    origin_detail = models.CharField(max_length=500, blank=True)

    # The changed fields only: {field: value} before and after (JSON-safe: decimals, dates and
    # UUIDs as strings). Created: before is {}. Deleted: after is {}.
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    # simple-history's row for this change (its history_id), to open it next to ours.
    history_id = models.BigIntegerField(null=True, blank=True)

    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"
        # Nobody adds, changes or deletes through Django either: only the capture writes rows.
        default_permissions = ("view",)
        permissions = [
            ("export_auditentry", "Can export the audit log (CSV, JSON Lines)"),
            ("view_timeline_auditentry", "Can view an account's audit timeline"),
        ]
        indexes = [
            models.Index(fields=["account_id", "created_at"], name="audit_account_time_idx"),
            models.Index(fields=["app_label", "model", "object_pk"], name="audit_object_idx"),
        ]
        triggers = [
            pgtrigger.Protect(
                name="audit_append_only",
                operation=pgtrigger.Update | pgtrigger.Delete,
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.actor_label} {self.action} {self.app_label}.{self.model} {self.object_pk}"

    def content(self) -> dict:
        """What the hash covers: every column but the hash itself (prev_hash included)."""
        return {
            "seq": self.seq,
            "created_at": self.created_at.isoformat(),
            "actor_kind": self.actor_kind,
            "actor_user_id": self.actor_user_id,
            "actor_label": self.actor_label,
            "app_label": self.app_label,
            "model": self.model,
            "object_pk": self.object_pk,
            "account_id": self.account_id,
            "action": self.action,
            "reason": self.reason,
            "origin": self.origin,
            "origin_detail": self.origin_detail,
            "before": self.before,
            "after": self.after,
            "history_id": self.history_id,
            "prev_hash": self.prev_hash,
        }
