"""Billing reads metering's tables through metering's selectors, not with its own SQL."""

from __future__ import annotations

import re
from pathlib import Path

import billing

METERING_TABLES = re.compile(r"metering_(usageevent|rollup\w*|quarantinedevent)")
# The push ledger's INSERT ... SELECT from the event rows (hot path, one statement per batch).
ALLOWED = {"services/push/enqueue.py"}


def test_billing_has_no_sql_on_metering_tables_outside_the_push_insert():
    root = Path(billing.__file__).parent
    found = {
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "migrations" not in path.parts and METERING_TABLES.search(path.read_text())
    }
    assert found <= ALLOWED
