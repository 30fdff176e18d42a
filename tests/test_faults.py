"""Faults survived, nothing lost: a small run of bench/faults.py in the suite.

5,000 events sent by retrying clients through gunicorn while a gunicorn worker is killed twice
(once right after a commit), the Celery pool process is killed in the middle of a rollup drain,
the whole Celery worker in the middle of a usage push,
and a private PostgreSQL cluster (never the shared server) is crash-restarted. See
bench/faults.py for how each fault is aimed and what is checked. It needs PostgreSQL's server
binaries (initdb, pg_ctl) and Redis on 127.0.0.1:6379 (database 14); it is skipped without
them, and `-m "not faults"` leaves it out.
"""

from __future__ import annotations

import pytest

from bench.faults import DRAIN_KILL, PUSH_KILL, SetupError, run_faults

pytestmark = pytest.mark.faults


def test_killed_workers_and_a_postgres_restart_lose_and_double_nothing():
    try:
        report = run_faults(
            events=5_000,
            clients=3,
            seed=11,
            batch=100,
            workers=2,
            accounts=20,
            rollup_batch=200,
            load_seconds=4,
            redis_url="redis://127.0.0.1:6379/14",
            settle_timeout=180,
            visibility_timeout=5,
            push_aim_seconds=10,
        )
    except SetupError as exc:
        pytest.skip(f"cannot run the fault run here: {exc}")
    text = "\n".join(report.lines())
    assert [c.name for c in report.checks if not c.ok] == [], text
    assert {i.what for i in report.injections} == {
        "kill -9 gunicorn worker",
        "pg_ctl restart -m immediate",
        DRAIN_KILL,
        PUSH_KILL,
    }, text
