"""Admin for adjustments and the audit log: one module each."""

from adjustments.admin import adjustment, audit  # noqa: F401
