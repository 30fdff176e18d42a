"""Walk the audit log's hash chain and report the first gap, edited or moved row.

Exit status 0 when the chain holds, 1 (with the row and what is wrong) when it does not.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from adjustments.audit import audit_chain_verify
from adjustments.models import AuditEntry


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (exit status 1 at the first broken row)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--progress-every",
            type=int,
            default=100_000,
            help="Print progress every this many rows (default 100000).",
        )

    def handle(self, *args, progress_every: int, **options):
        total = AuditEntry.objects.count()
        if options["verbosity"] >= 1:
            self.stdout.write(f"Verifying {total} audit log entries…")

        def progress(checked: int) -> None:
            if options["verbosity"] >= 1:
                percent = 100 * checked // total if total else 100
                self.stdout.write(f"  {checked} of {total} rows verified ({percent}%)")
                self.stdout.flush()

        checked, problem = audit_chain_verify(
            progress=progress, progress_every=max(progress_every, 1)
        )
        if problem is not None:
            raise CommandError(
                f"Audit chain broken at row {problem.seq} ({checked} rows before it verified): "
                f"{problem.message}"
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {checked} rows verified."))
