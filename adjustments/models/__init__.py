"""Adjustments (credits, usage corrections, approvals) and the append-only audit log."""

from adjustments.models.adjustment import *  # noqa: F403
from adjustments.models.audit import *  # noqa: F403
