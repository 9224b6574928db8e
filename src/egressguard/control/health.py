"""Is the policy store reachable? One state, one log line when it changes.

A request that fails because the database is out of reach calls `failed`; a probe
(`/healthz`, `/readyz`) calls `check`, which pings the store and records either outcome.
Only a change of state is logged (a warning going down, an info line coming back), so an
outage scraped every second leaves two lines, not a traceback per request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from egressguard.store import unavailable_reason

RETRY_AFTER = 5  # seconds a client is told to wait before retrying a refused write

_log = logging.getLogger("egressguard.control")


class Pingable(Protocol):
    def ping(self) -> None: ...


class StoreHealth:
    def __init__(self, store: Pingable) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.reason: str | None = None  # None while reachable
        self.since = time.time()

    @property
    def up(self) -> bool:
        return self.reason is None

    def failed(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                _log.warning("policy store unreachable: %s (API answers 503 until it is "
                             "back)", reason)
                self.since = time.time()
            self.reason = reason

    def recovered(self) -> None:
        with self._lock:
            if self.reason is not None:
                _log.info("policy store reachable again after %.0f s",
                          time.time() - self.since)
                self.since = time.time()
            self.reason = None

    def check(self) -> str | None:
        """Ping the store now: None if reachable, else the reason (other errors raise)."""
        try:
            self.store.ping()
        except Exception as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            self.failed(reason)
            return reason
        self.recovered()
        return None
