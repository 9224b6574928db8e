"""Engines and migrations for the audit tables (connection rules: `egressguard.store.db`).

SQLite connections run in WAL mode with `synchronous=FULL`: a commit returns only after
the WAL is fsynced, which is what makes an acknowledged record survive kill -9 and power
loss. PostgreSQL commits are durable with its defaults (`fsync=on`,
`synchronous_commit=on`).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from egressguard.store.db import make_engine as make_engine_for
from egressguard.store.db import migrate as migrate_environment
from egressguard.store.db import snapshot_options
from egressguard.store.urls import normalize_url

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 7217006  # PostgreSQL advisory lock for concurrent migrations of the audit tables


CONNECT_TIMEOUT_S = 3  # PostgreSQL: a store that does not answer is "unreachable" (spool)


def make_engine(url: str | URL) -> Engine:
    """An engine for the audit tables: writes take the SQLite write lock at BEGIN; a
    PostgreSQL connection attempt gives up after `CONNECT_TIMEOUT_S` (libpq's default is
    to wait for TCP, minutes), so an unanswering store sends records to the spool soon."""
    parsed = normalize_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    return make_engine_for(parsed, write_by_default=True, pool_size=4)


def migrate(engine: Engine) -> None:
    """Create or upgrade the audit tables (idempotent, safe from several processes)."""
    migrate_environment(engine, _MIGRATIONS, _LOCK_ID)


__all__ = ["make_engine", "migrate", "snapshot_options"]
