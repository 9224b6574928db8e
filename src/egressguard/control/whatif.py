"""What-if checks for the API: the same request building and answer as `egressguard
check --json` (the CLI could share `build_request`)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from egressguard.engine import Kind, Request, Snapshot, compile_policy
from egressguard.store import Store, Version, references


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


def build_request(url: str, callout_type: str | None, port: int | None, kind: Kind | None,
                  addresses: list[str], source: str | None) -> Request:
    """A `Request` as `egressguard check` builds it; ValueError on a bad address."""
    ips = tuple(ipaddress.ip_address(a) for a in addresses)
    src = ipaddress.ip_address(source) if source else None
    chosen = kind or (Kind.CALLOUT if callout_type else Kind.HTTP)
    if chosen in (Kind.HTTP, Kind.CALLOUT):
        return Request(kind=chosen, host="", uri=url, port=port, callout_type=callout_type,
                       addresses=ips, source=src)
    host, _, port_text = url.rpartition(":") if url.count(":") == 1 else (url, "", "")
    if not port_text.isdigit():
        host, port_text = url, ""
    return Request(kind=chosen, host=host, port=port or (int(port_text) if port_text else None),
                   addresses=ips, source=src,
                   protocol="udp" if chosen is Kind.DNS else "tcp")


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
    request = build_request(body.url, body.type, body.port, body.kind, body.addresses,
                            body.source)
    return version.number, snapshot.decide(request).as_dict()
