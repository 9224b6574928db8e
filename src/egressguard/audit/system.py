"""System events: the cluster's key state changes (Suspended, Running), in clear.

They are written exactly when no data key can be had (the key was just revoked), so they
are not sealed; they hold no client data (the key id, the reason, who noticed). A store
that is unreachable is often *why* the cluster suspended: events that cannot be written
wait in memory (bounded) and go out with the next one that can.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, select

from egressguard.audit.schema import system

log = logging.getLogger("egressguard.audit")
MAX_WAITING = 1000


class SystemEvents:
    """Writes system events for `cluster` as `source` (a gateway's writer or host)."""

    def __init__(self, engine: Engine, cluster: str, source: str) -> None:
        self.engine = engine
        self.cluster = cluster[:64]
        self.source = source[:64]
        self._waiting: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, event: dict[str, Any]) -> bool:
        """Write `event` (a `StateChange.record()`) and any still waiting; False (kept
        for later, logged) when the store cannot take them now."""
        row: dict[str, Any] = {"time": time.time(), "cluster": self.cluster, "source": self.source,
               "event": str(event.get("event", "system"))[:32],
               "detail": json.dumps(event, sort_keys=True)[:4000]}
        with self._lock:
            self._waiting.append(row)
            del self._waiting[:-MAX_WAITING]
            rows = list(self._waiting)
            try:
                with self.engine.begin() as conn:
                    conn.execute(system.insert(), rows)
            except Exception as exc:
                log.error("audit: system event kept for later (store: %s): %s",
                          type(exc).__name__, str(row["detail"])[:200])
                return False
            self._waiting.clear()
        return True


def system_events(engine: Engine, cluster: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """The newest system events, newest first (the detail parsed back)."""
    stmt = select(system).order_by(system.c.id.desc()).limit(max(1, min(limit, 10_000)))
    if cluster is not None:
        stmt = stmt.where(system.c.cluster == cluster)
    with engine.connect() as conn:
        return [{"id": r.id, "time": r.time, "cluster": r.cluster, "source": r.source,
                 **json.loads(r.detail)} for r in conn.execute(stmt)]
