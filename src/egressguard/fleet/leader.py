"""One leader per fleet for the jobs that must not run in every gateway (retention).

On PostgreSQL the leader is whoever holds `pg_try_advisory_lock(key)` on a dedicated
session-level connection: the lock lives exactly as long as that session, so a leader
that dies (kill -9, lost host, cut network) releases it when its backend sees the socket
close or its keepalive fail, and the next gateway that tries takes over. Every member
retries every `interval` seconds; the leader pings its connection as often, and steps
down (stops running jobs) the moment the ping fails, before anyone else can have taken
over. On SQLite the store is one file on one host: that host is the leader.

Jobs run in the leader's own thread, one after another, never on the event loop; a job
that raises is logged in one line and retried at its next turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import make_url

_log = logging.getLogger("egressguard.fleet")
DEFAULT_LOCK = "egressguard singleton jobs"


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@dataclass
class Job:
    """`run` every `every_s` seconds while this member leads (first run at once)."""

    name: str
    every_s: float
    run: Callable[[], object]
    next_at: float = field(default=0.0, compare=False)


class Leader:
    """Campaign for the fleet's lock and run `jobs` while holding it.

    Use::

        leader = Leader(store_url, [Job("audit retention", 60, prune)]).start()
        ...
        leader.stop()       # closes the session: the lock passes on at once
    """

    def __init__(self, store_url: str, jobs: list[Job] | None = None, *,
                 name: str = DEFAULT_LOCK, interval: float = 1.0) -> None:
        url = make_url(store_url)
        self.dialect = url.get_backend_name()
        self._conninfo = url.set(drivername="postgresql").render_as_string(
            hide_password=False) if self.dialect == "postgresql" else ""
        self.jobs = list(jobs or [])
        self.key = lock_key(name)
        self.interval = interval
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    @property
    def leading(self) -> bool:
        """Whether this member holds the lock now."""
        return self._leading.is_set()

    def wait_leading(self, timeout: float) -> bool:
        return self._leading.wait(timeout)

    def start(self) -> Leader:
        self._thread = threading.Thread(target=self._run, name="fleet-leader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._release()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._hold():
                self._run_due()
            self._stop.wait(self.interval)

    def _hold(self) -> bool:
        """Still (or newly) the leader? Never raises: a lost store means not leading."""
        if self.dialect != "postgresql":
            self._become(True)
            return True
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._conninfo, autocommit=True,
                                             connect_timeout=5, keepalives=1,
                                             keepalives_idle=5, keepalives_interval=2,
                                             keepalives_count=2,
                                             application_name="egressguard-leader")
            if self.leading:
                self._conn.execute("SELECT 1")
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (self.key,)).fetchone()
            got = bool(row and row[0])
        except psycopg.Error as exc:
            if self.leading:
                _log.warning("fleet leader: lost the store, stepping down (%s)",
                             " ".join(str(exc).split())[:200])
            self._release()
            return False
        self._become(got)
        return got

    def _become(self, leading: bool) -> None:
        if leading and not self.leading:
            _log.info("fleet leader: this gateway now runs the singleton jobs")
            for job in self.jobs:
                job.next_at = 0.0
            self._leading.set()
        elif not leading:
            self._leading.clear()

    def _release(self) -> None:
        self._leading.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # ends the session, which releases the lock

    def _run_due(self) -> None:
        for job in self.jobs:
            now = time.monotonic()
            if now < job.next_at or self._stop.is_set() or not self.leading:
                continue
            job.next_at = now + job.every_s
            try:
                job.run()
            except Exception as exc:  # a failing job is retried at its next turn
                _log.error("fleet job %s failed: %s: %s", job.name, type(exc).__name__,
                           " ".join(str(exc).split())[:300])
