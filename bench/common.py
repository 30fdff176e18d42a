"""What every bench script needs: a database of its own on the server of $DATABASE_URL."""

from __future__ import annotations

import os
from urllib.parse import urlparse, urlunparse

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/meterops"


def database_url(database: str) -> str:
    """The URL of `database` on $DATABASE_URL's server (connection options dropped)."""
    base = urlparse(os.environ.get("DATABASE_URL") or DEFAULT_URL)
    return urlunparse(base._replace(path=f"/{database}", query=""))


def bench_url(database: str) -> tuple[str, str]:
    """(URL of the bench database, URL of the maintenance database) on $DATABASE_URL's server."""
    return database_url(database), database_url("postgres")


def recreate_database(database: str, maintenance_url: str) -> None:
    """Drop `database` (disconnecting whoever uses it) and create it empty."""
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
