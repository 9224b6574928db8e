"""Engines and migrations for the audit tables.

SQLite connections run in WAL mode with `synchronous=FULL`: a commit returns only after
the WAL is fsynced, which is what makes an acknowledged record survive kill -9 and power
loss. PostgreSQL commits are durable with its defaults (`fsync=on`,
`synchronous_commit=on`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from egressguard.store.urls import normalize_url

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 7217006  # PostgreSQL advisory lock for concurrent migrations of the audit tables


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy starts transactions (see _sqlite_begin)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN: concurrent writers queue on busy_timeout instead of
    # failing on a stale read snapshot; migrations from several processes serialise.
    # Readers that want one consistent snapshot without blocking writers pass
    # `snapshot=True` (a deferred BEGIN: WAL gives them a stable view).
    snapshot = conn.get_execution_options().get("snapshot", False)
    conn.exec_driver_sql("BEGIN" if snapshot else "BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    parsed = normalize_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 10,
                                                     "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4)


def snapshot_options(engine: Engine) -> dict[str, Any]:
    """Execution options for a read-only transaction that sees one consistent state."""
    if engine.dialect.name == "sqlite":
        return {"snapshot": True}
    return {"isolation_level": "REPEATABLE READ"}


def migrate(engine: Engine) -> None:
    """Create or upgrade the audit tables (idempotent, safe from several processes)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
