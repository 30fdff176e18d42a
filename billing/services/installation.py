"""This installation's id at the billing provider (see billing.models.PushInstallation)."""

from __future__ import annotations

import secrets

from django.db import connection, transaction
from django.utils import timezone

from billing.models import PushInstallation


def _database_oid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _new_id() -> str:
    return secrets.token_hex(5)  # 10 characters, 40 random bits


def installation_id() -> str:
    """The installation id, made on first use and renewed when the database is not the one it
    was made in (a dump restored into a new database)."""
    oid = _database_oid()
    row = PushInstallation.objects.filter(pk=1).first()
    if row is not None and row.database_oid == oid:
        return row.installation_id
    with transaction.atomic():
        row = PushInstallation.objects.select_for_update().filter(pk=1).first()
        if row is None:
            PushInstallation.objects.bulk_create(
                [PushInstallation(pk=1, installation_id=_new_id(), database_oid=oid)],
                ignore_conflicts=True,
            )
            return PushInstallation.objects.get(pk=1).installation_id
        if row.database_oid != oid:
            return installation_renew(
                reason=f"database oid {row.database_oid} -> {oid}"
            ).installation_id
        return row.installation_id


def installation_renew(*, reason: str = "") -> PushInstallation:
    """A new installation id (after a physical restore, for instance); the old one is kept in
    `previous_ids`. Entries already in the ledger keep their identifiers."""
    with transaction.atomic():
        row = PushInstallation.objects.select_for_update().filter(pk=1).first()
        oid = _database_oid()
        if row is None:
            row = PushInstallation.objects.create(pk=1, installation_id=_new_id(), database_oid=oid)
            return row
        now = timezone.now()
        row.previous_ids = [
            *row.previous_ids,
            {"id": row.installation_id, "until": now.isoformat(), "reason": reason},
        ]
        row.installation_id = _new_id()
        row.database_oid = oid
        row.renewed_at = now
        row.save()
        return row
