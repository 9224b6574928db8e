from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from egressguard.audit.events import DecisionEvent

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def pg_available() -> bool:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


@pytest.fixture
def audit_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bytes:
    key = os.urandom(32)
    monkeypatch.setenv("EGRESSGUARD_AUDIT_KEY", base64.b64encode(key).decode())
    monkeypatch.setenv("EGRESSGUARD_HOME", str(tmp_path / "home"))
    return key


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not pg_available():
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name = f"eg_audit_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


def event(**changes: Any) -> DecisionEvent:
    base: dict[str, Any] = dict(
        time=time.time(), cluster="default", kind="connect", host="api.example.com",
        port=443, verdict="allow", permitted=True, layer="application",
        rule="application:apps/api", reason="api.example.com:443 allowed",
        policy_version="3", connection_id="c1", client_address="10.1.2.3",
        client_identity="build-agent", method="CONNECT", path="")
    base.update(changes)
    return DecisionEvent(**base)
