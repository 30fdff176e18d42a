"""Auditor views of the audit log."""
