"""What-if checks for the API: the same query model, request building and answer as
`egressguard check --json` (both take a `CheckQuery`, see `engine.query`); and what an
update would do to a cluster's routes (`cluster update --what-if`, `POST .../whatIf`)."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from pydantic import Field

from egressguard.control.properties import from_arm
from egressguard.engine import Snapshot
from egressguard.engine.query import CheckQuery
from egressguard.engine.routes import checks, stops_working
from egressguard.policy import Policy
from egressguard.source import snapshot_for
from egressguard.store import Store


class CheckRequest(CheckQuery):
    """Body of `POST /v1/check`: the options of `egressguard check`, and the cluster."""

    cluster: str | None = Field(None, max_length=100,
                                description="the cluster to decide under (default: the "
                                            "one this gateway serves, else `default`)")


class Snapshots(Protocol):
    def snapshot(self, name: str) -> tuple[str, Snapshot]:
        """(version label, compiled policy in force) of cluster `name`."""
        ...


class SnapshotCache:
    """Compiled snapshots of stored versions, so what-ifs do not recompile each time."""

    def __init__(self, store: Store, size: int = 16) -> None:
        self._store = store
        self._size = size
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], Snapshot] = {}

    def snapshot(self, name: str) -> tuple[str, Snapshot]:
        version = self._store.current(name)
        key = (name, version.number)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = snapshot_for(version.policy)
            with self._lock:
                if len(self._cache) >= self._size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = found
        return str(version.number), found


def decide(snapshots: Snapshots, cluster: str, query: CheckQuery
           ) -> tuple[str, dict[str, Any]]:
    """(version decided against, the decision as `egressguard check --json` prints it)."""
    version, snapshot = snapshots.snapshot(cluster)
    return version, snapshot.decide(query.request()).as_dict()


def route_what_if(current: Policy, body: Any) -> dict[str, Any]:
    """What an update (`body`, as PATCH takes it) would do to the cluster's routes, before
    anything changes: `stopsWorking` lists the routes and egress features that work now
    and would be refused after it (each with the rule and reason), `routes` every route
    under the proposed policy. Raises `InvalidInput` as the update itself would."""
    proposed = from_arm(body, current)
    lost = stops_working(current, snapshot_for(current), snapshot_for(proposed), proposed)
    return {"whatIf": True, "stopsWorking": [c.as_dict() for c in lost],
            "routes": [c.as_dict() for c in checks(proposed, snapshot_for(proposed))]}
