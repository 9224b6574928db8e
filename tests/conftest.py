"""Databases every area's tests share: a real SQLite file and a real PostgreSQL database;
and a private data home and config folder for the whole run, so that no test reads the
developer's config or writes to the real home (`~/.local/share/egressguard`).

PostgreSQL runs on 127.0.0.1:5432 (trust auth, user postgres; `.ci/run` starts it); each
test that asks for `pg_url` gets its own freshly created database, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.relay import Relay, relayed_url

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


# EGRESSGUARD_CONFIG names one (absent) file, so /etc/egressguard/config.yaml is not read.
HERMETIC = {"EGRESSGUARD_HOME": "home", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data",
            "EGRESSGUARD_CONFIG": "config/egressguard/config.yaml"}
UNSET = ("EGRESSGUARD_STORE", "EGRESSGUARD_CLUSTER", "EGRESSGUARD_API", "EGRESSGUARD_TOKEN")
_saved: dict[str, str | None] = {}
_ROOT = pytest.StashKey[Path]()


def _apply(root: Path) -> None:
    for key, sub in HERMETIC.items():
        os.environ[key] = str(root / sub)
    for key in UNSET:
        os.environ.pop(key, None)


def pytest_configure(config: pytest.Config) -> None:
    """Before collection: test modules compile policies at import, which reads the data
    home (operator catalog files), so the private one must be in place that early."""
    root = Path(tempfile.mkdtemp(prefix="egressguard-test-env-"))
    config.stash[_ROOT] = root
    _saved.update({k: os.environ.get(k) for k in (*HERMETIC, *UNSET)})
    _apply(root)


def pytest_unconfigure(config: pytest.Config) -> None:
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    root = config.stash.get(_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def hermetic_home(request: pytest.FixtureRequest) -> Path:
    """Every test runs with a temporary data home and config folder, never the real ones
    (tests that need their own home still set EGRESSGUARD_HOME themselves)."""
    root = request.config.stash[_ROOT]
    _apply(root)  # again, in case a module changed them at import
    return root / "home"


@pytest.fixture(autouse=True)
def no_store_sealing_leak() -> Iterator[None]:
    """`build_app` installs the process-wide store sealing factory (CLI processes seal per
    cluster); a CLI test run in-process must not change what later tests' stores do."""
    from egressguard.store import sealing

    before = sealing._factory
    yield
    sealing.install(before)


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
def pg_relay(pg_url: str) -> Iterator[tuple[Relay, str]]:
    """A cuttable relay in front of `pg_url`'s server, and the URL through it."""
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    relay = Relay((url.host or "127.0.0.1", url.port or 5432))
    yield relay, relayed_url(pg_url, relay)
    relay.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
