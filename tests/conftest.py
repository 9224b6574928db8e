"""Databases every area's tests share: a real SQLite file and a real PostgreSQL database;
and a private data home and config folder for the whole run, so that no test reads the
developer's config or writes to the real home (`~/.local/share/egressguard`).

PostgreSQL runs on 127.0.0.1:5432 (trust auth, user postgres; `.ci/run` starts it); each
test that asks for `pg_url` gets its own freshly created database, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


HERMETIC = {"EGRESSGUARD_HOME": "home", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data"}
UNSET = ("EGRESSGUARD_CONFIG", "EGRESSGUARD_STORE", "EGRESSGUARD_CLUSTER", "EGRESSGUARD_API",
         "EGRESSGUARD_TOKEN")


@pytest.fixture(scope="session", autouse=True)
def hermetic_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs with a temporary data home and config folder (tests that need their
    own still set EGRESSGUARD_HOME themselves)."""
    root = tmp_path_factory.mktemp("egressguard-env")
    saved = {k: os.environ.get(k) for k in (*HERMETIC, *UNSET)}
    for key, sub in HERMETIC.items():
        os.environ[key] = str(root / sub)
    for key in UNSET:
        os.environ.pop(key, None)
    try:
        yield root / "home"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        psycopg.connect(PG_ADMIN).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    if not pg_available:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    name = f"egtest_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
