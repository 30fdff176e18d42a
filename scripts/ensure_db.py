"""Find or make a PostgreSQL database for Meterops and print its DATABASE_URL.

Order: $DATABASE_URL if set; else the local server on 127.0.0.1:5432 (database `meterops`,
created if missing); else a private cluster under .data/pg started with the machine's
initdb/pg_ctl; else a clear message on what to install. Diagnostics go to stderr, the URL to
stdout, so `make` can capture it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_DIR = ROOT / ".data" / "pg"
PRIVATE_PORT = 54329
DB_NAME = os.environ.get("METEROPS_DB_NAME", "meterops")


def log(msg: str) -> None:
    print(f"[db] {msg}", file=sys.stderr)


def try_server(dsn_base: str) -> str | None:
    try:
        with psycopg.connect(f"{dsn_base}/postgres", connect_timeout=3, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
                log(f"created database {DB_NAME}")
        return f"{dsn_base}/{DB_NAME}"
    except psycopg.OperationalError as exc:
        log(f"no server at {dsn_base.split('@')[-1]}: {str(exc).strip().splitlines()[0]}")
        return None


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def start_private_cluster() -> str | None:
    initdb, pg_ctl = find_tool("initdb"), find_tool("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    PRIVATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    run_as: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root; use the postgres system user if there is one.
        if (
            shutil.which("runuser")
            and subprocess.run(["id", "postgres"], capture_output=True).returncode == 0
        ):
            run_as = ["runuser", "-u", "postgres", "--"]
            subprocess.run(["chown", "-R", "postgres", str(PRIVATE_DIR.parent)], check=False)
        else:
            log("running as root without a postgres user: cannot start a private cluster")
            return None
    if not (PRIVATE_DIR / "PG_VERSION").exists():
        log(f"initialising a private cluster in {PRIVATE_DIR}")
        subprocess.run(
            [*run_as, initdb, "-D", str(PRIVATE_DIR), "-U", "postgres", "--auth=trust"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    status = subprocess.run(
        [*run_as, pg_ctl, "-D", str(PRIVATE_DIR), "status"], capture_output=True
    )
    if status.returncode != 0:
        log(f"starting the private cluster on 127.0.0.1:{PRIVATE_PORT}")
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(PRIVATE_DIR),
                "-l",
                str(PRIVATE_DIR / "server.log"),
                "-w",
                "-o",
                f"-p {PRIVATE_PORT} -k {PRIVATE_DIR} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return try_server(f"postgres://postgres@127.0.0.1:{PRIVATE_PORT}")


def main() -> int:
    url = os.environ.get("DATABASE_URL")
    if url:
        print(url)
        return 0
    url = try_server("postgres://postgres@127.0.0.1:5432") or start_private_cluster()
    if url is None:
        log(
            "No PostgreSQL found. Install it (Debian/Ubuntu: apt-get install postgresql; "
            "macOS: brew install postgresql) or set DATABASE_URL=postgres://user:pass@host:5432/meterops"
        )
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
