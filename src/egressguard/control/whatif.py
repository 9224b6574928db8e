"""What-if checks for the API: the same request building and answer as `egressguard
check --json` (both build requests with `engine.request.build_request`)."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from egressguard.catalog import references
from egressguard.engine import Kind, Snapshot, compile_policy
from egressguard.engine.request import build_request
from egressguard.store import Store, Version


class CheckRequest(BaseModel):
    """Body of `POST /v1/check`; mirrors the options of `egressguard check`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=8192,
                     description="URL or host[:port] to decide")
    type: str | None = Field(None, max_length=64,
                             description="decide as an in-process callout of this type")
    kind: Kind | None = Field(None, description="http, connect, dns, callout or flow")
    port: int | None = Field(None, ge=1, le=65535)
    addresses: list[str] = Field(default_factory=list, max_length=64,
                                 description="addresses the name resolves to")
    source: str | None = Field(None, max_length=64, description="client source address")
    cluster: str = Field("default", max_length=100)


class SnapshotCache:
    """Compiled snapshots of stored versions, so what-ifs do not recompile each time."""

    def __init__(self, store: Store, size: int = 16) -> None:
        self._store = store
        self._size = size
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], Snapshot] = {}

    def current(self, cluster: str) -> tuple[Version, Snapshot]:
        version = self._store.current(cluster)
        key = (cluster, version.number)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = compile_policy(version.policy, references())
            with self._lock:
                if len(self._cache) >= self._size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = found
        return version, found


def decide(cache: SnapshotCache, body: CheckRequest) -> tuple[int, dict[str, Any]]:
    """(version decided against, the decision as `egressguard check --json` prints it)."""
    version, snapshot = cache.current(body.cluster)
    request = build_request(body.url, callout_type=body.type, port=body.port,
                            kind=body.kind, addresses=body.addresses, source=body.source)
    return version.number, snapshot.decide(request).as_dict()
