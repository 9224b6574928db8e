"""Engines and migrations for every table egressguard keeps (policy store and audit log).

One database, two Alembic environments (the store's `alembic_version` and the audit log's
`alembic_version_audit`), one way to connect:

* SQLite runs in WAL mode with `synchronous=FULL`: a commit returns only after the WAL is
  fsynced, so a committed policy version or an acknowledged audit record survives kill -9
  and power loss. SQLAlchemy, not the sqlite3 module, starts transactions; a transaction
  takes the write lock at BEGIN (`BEGIN IMMEDIATE`) when the engine writes by default or
  the connection asks with `sqlite_immediate=True`, so writers queue on `busy_timeout`
  instead of failing on a stale read snapshot. `snapshot=True` asks for a plain deferred
  BEGIN (a consistent read that never blocks writers).
* PostgreSQL commits are durable with its defaults (`fsync=on`, `synchronous_commit=on`).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from egressguard.paths import private_sqlite_file
from egressguard.store.urls import normalize_url


def _sqlite_setup(busy_timeout_ms: int) -> Any:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy starts transactions (the BEGIN hook)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    return connect


def make_engine(url: str | URL, *, write_by_default: bool = False,
                pool_size: int = 5, busy_timeout_ms: int = 10000) -> Engine:
    """An engine for `url` (a store URL string or a parsed URL). `busy_timeout_ms`: how
    long a SQLite statement waits for another process's lock before failing."""
    parsed = normalize_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        # An unreachable server must fail a request in seconds, not hang it (and /healthz).
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 5}
        return create_engine(parsed, pool_pre_ping=True, pool_size=pool_size,
                             max_overflow=pool_size, pool_timeout=10,
                             connect_args=connect_args)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        private_sqlite_file(Path(parsed.database))
    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_ms / 1000,
                                                 "check_same_thread": False})

    def begin(conn: Any) -> None:
        options = conn.get_execution_options()
        immediate = options.get("sqlite_immediate", write_by_default)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate and not options.get("snapshot")
                             else "BEGIN")

    event.listen(engine, "connect", _sqlite_setup(busy_timeout_ms))
    event.listen(engine, "begin", begin)
    return engine


def snapshot_options(engine: Engine) -> dict[str, Any]:
    """Execution options for a read-only transaction that sees one consistent state."""
    if engine.dialect.name == "sqlite":
        return {"snapshot": True}
    return {"isolation_level": "REPEATABLE READ"}


_REVISION = re.compile(r'^\s*(down_revision|revision|version_table)\s*[:=].*?"([^"]*)"', re.M)


@cache
def _heads(script_location: Path) -> tuple[str, frozenset[str]]:
    """The environment's version table and head revisions, read from its files' text
    (importing Alembic to ask costs ~100 ms on every CLI command)."""
    table = _REVISION.search((script_location / "env.py").read_text(encoding="utf-8"))
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (script_location / "versions").glob("*.py"):
        found = dict((m[0], m[1]) for m in _REVISION.findall(path.read_text("utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision", ""))
    return (table[2] if table else "alembic_version"), frozenset(revisions - parents)


def _at_head(engine: Engine, script_location: Path) -> bool:
    """True when the database already records exactly the newest revisions (the common
    case: then nothing to lock or upgrade). Any doubt answers False (Alembic decides)."""
    table, heads = _heads(script_location)
    if not heads:
        return False
    try:
        with engine.connect() as conn:
            found = {row[0] for row in conn.execute(text(f"SELECT version_num FROM {table}"))}
    except (OperationalError, ProgrammingError):  # no table yet: a new database
        return False
    return found == heads


def migrate(engine: Engine, script_location: Path, lock_id: int) -> None:
    """Bring one Alembic environment to its newest revision. Safe to run from several
    processes at once: PostgreSQL takes advisory lock `lock_id`, SQLite the write lock."""
    if _at_head(engine, script_location):
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("path_separator", "os")
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({int(lock_id)})"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
