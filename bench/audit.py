"""Benchmark: what the audit log costs a history write, and how fast it verifies and exports.

    uv run python bench/audit.py                      # 2,000 accounts, 4 rounds, 4 threads
    uv run python bench/audit.py --accounts 500 --rounds 2

It works in its own database (`meterops_bench_audit` on the server of $DATABASE_URL),
recreated at each run. Steps:

1. migrate; create the accounts with `account_upsert` (one history row and one audit entry
   each);
2. rename every account with `account_upsert` (the API's PUT), `--rounds` times, alternating
   rounds with the audit capture connected and disconnected (the same process, the same rows,
   so the machine's noise hits both alike), and print the time per upsert of each;
3. the same from `--threads` threads at once, each on its own accounts, one transaction per
   upsert (writers take turns at the audit lock from the history row to the commit);
4. `audit_verify`'s walk over the whole log (rows/s) and a streamed CSV export of it (rows/s,
   peak Python memory while streaming).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bench_url, recreate_database  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument(
        "--rounds", type=int, default=4, help="rename rounds (half of them audited)"
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database", default="meterops_bench_audit")
    return parser.parse_args()


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def capture(on: bool) -> None:
    from simple_history.signals import post_create_historical_record

    from adjustments.audit import audit_history_record

    if on:
        post_create_historical_record.connect(
            audit_history_record, dispatch_uid="meterops_audit_history_record"
        )
    else:
        post_create_historical_record.disconnect(dispatch_uid="meterops_audit_history_record")


def rename_all(external_ids: list[str], tag: str) -> float:
    from metering.services.accounts import account_upsert

    started = time.perf_counter()
    for external_id in external_ids:
        account_upsert(external_id=external_id, name=f"{external_id} {tag}", reason="bench")
    return time.perf_counter() - started


def threaded(external_ids: list[str], threads: int, tag: str) -> float:
    from django.db import connections

    shares = [external_ids[i::threads] for i in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def work(share: list[str]) -> None:
        try:
            barrier.wait()
            rename_all(share, tag)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=work, args=(share,)) for share in shares]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    url, maintenance = bench_url(args.database)
    recreate_database(args.database, maintenance)
    setup_django(url)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from adjustments.audit import audit_chain_verify, audit_export_csv, audit_export_rows
    from adjustments.models import AuditEntry
    from metering.services.accounts import account_upsert

    ids = [f"bench-{n:06d}" for n in range(args.accounts)]
    started = time.perf_counter()
    for external_id in ids:
        account_upsert(external_id=external_id, name=external_id, reason="bench")
    print(f"created {args.accounts:,} accounts (audited) in {time.perf_counter() - started:.1f} s")

    timings: dict[bool, list[float]] = {True: [], False: []}
    for n in range(args.rounds):
        on = n % 2 == 0
        capture(on)
        timings[on].append(rename_all(ids, f"r{n}"))
    capture(True)
    per = {on: 1e3 * sum(t) / (len(t) * args.accounts) for on, t in timings.items() if t}
    print(
        f"sequential upsert (one change, one history row): {per[False]:.2f} ms without the "
        f"audit capture, {per[True]:.2f} ms with it "
        f"(+{per[True] - per[False]:.2f} ms, x{per[True] / per[False]:.2f})"
    )

    rates = {}
    for n, on in enumerate((False, True, False, True)):
        capture(on)
        elapsed = threaded(ids, args.threads, f"t{n}")
        rates.setdefault(on, []).append(args.accounts / elapsed)
    capture(True)
    best = {on: max(r) for on, r in rates.items()}
    print(
        f"{args.threads} threads, one transaction per upsert: best of 2 {best[False]:,.0f} "
        f"upserts/s without the capture, {best[True]:,.0f}/s with it "
        f"(x{best[True] / best[False]:.2f})"
    )

    total = AuditEntry.objects.count()
    started = time.perf_counter()
    checked, problem = audit_chain_verify()
    elapsed = time.perf_counter() - started
    assert problem is None and checked == total, (checked, total, problem)
    print(f"audit_verify: {checked:,} rows in {elapsed:.2f} s ({checked / elapsed:,.0f} rows/s)")

    tracemalloc.start()
    started = time.perf_counter()
    size = 0
    for chunk in audit_export_csv(audit_export_rows(AuditEntry.objects.all())):
        size += len(chunk)
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"CSV export: {total:,} rows, {size / 1e6:.1f} MB in {elapsed:.2f} s "
        f"({total / elapsed:,.0f} rows/s), peak Python memory {peak / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
