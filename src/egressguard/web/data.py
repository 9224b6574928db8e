"""What the dashboard shows, read from the store and the audit log (the I/O edge).

Counts and sums are computed by the database over the clear columns (indexed by time),
so a busy log costs one aggregate query per panel, not a scan in Python. Only the recent
denials are opened (their reason is sealed).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

from egressguard.analysis import Report, analyze
from egressguard.audit.crypto import Sealer
from egressguard.audit.query import Filter, outcome_of, to_record
from egressguard.audit.schema import events
from egressguard.store import Store, Version


@dataclass(frozen=True)
class PolicySummary:
    version: Version
    restricted: bool
    report_only: bool
    app_collections: int
    app_rules: int
    net_collections: int
    net_rules: int
    callouts: int
    service_endpoint_policies: int
    allowed_fqdns: tuple[str, ...]


def summarize(version: Version) -> PolicySummary:
    p = version.policy
    return PolicySummary(
        version=version, restricted=bool(p.restrict_outbound_network_access),
        report_only=p.report_only,
        app_collections=len(p.application_rule_collections),
        app_rules=sum(len(c.rules) for c in p.application_rule_collections),
        net_collections=len(p.network_rule_collections),
        net_rules=sum(len(c.rules) for c in p.network_rule_collections),
        callouts=len(p.callouts), service_endpoint_policies=len(p.service_endpoint_policies),
        allowed_fqdns=tuple(p.allowed_fqdn_list))


@dataclass(frozen=True)
class DecisionCount:
    outcome: str        # allow | deny | would-deny
    layer: str
    count: int


@dataclass(frozen=True)
class Destination:
    host: str
    bytes_up: int
    bytes_down: int
    connections: int


def decision_counts(engine: Engine, cluster: str, since: float) -> list[DecisionCount]:
    """Decisions since `since`, by outcome and layer (most frequent first)."""
    c = events.c
    stmt = (select(c.verdict, c.permitted, c.layer, func.count())
            .where(*Filter(since=since, cluster=cluster, phase="decision").where())
            .group_by(c.verdict, c.permitted, c.layer))
    with engine.connect() as conn:
        merged: dict[tuple[str, str], int] = {}
        for verdict, permitted, layer, n in conn.execute(stmt):
            key = (outcome_of(verdict, bool(permitted)), layer)
            merged[key] = merged.get(key, 0) + int(n)
    return sorted((DecisionCount(o, layer, n) for (o, layer), n in merged.items()),
                  key=lambda d: (-d.count, d.outcome, d.layer))


def top_destinations(engine: Engine, cluster: str, since: float, limit: int = 10
                     ) -> list[Destination]:
    """Destinations by bytes sent (to upstream) over connections closed since `since`."""
    c = events.c
    up = func.sum(c.bytes_up)
    stmt = (select(c.host, up, func.sum(c.bytes_down), func.count())
            .where(*Filter(since=since, cluster=cluster, phase="close").where())
            .group_by(c.host).order_by(up.desc(), c.host).limit(limit))
    with engine.connect() as conn:
        return [Destination(host, int(u or 0), int(d or 0), int(n))
                for host, u, d, n in conn.execute(stmt)]


def recent_denials(engine: Engine, sealer: Sealer, cluster: str, limit: int = 20
                   ) -> list[dict[str, Any]]:
    """The newest denied decisions, enforced or report-only, with their reasons."""
    c = events.c
    stmt = (select(events).where(*Filter(cluster=cluster, phase="decision").where(),
                                 c.verdict == "deny")
            .order_by(c.time.desc(), c.id.desc()).limit(limit))
    with engine.connect() as conn:
        return [to_record(row, sealer) for row in conn.execute(stmt)]


class FindingsCache:
    """Analysis results per (cluster, version), kept `ttl` seconds: a version never
    changes, but the catalog it is analysed against may (an imported service tag), so a
    page shows a catalog change within `ttl`."""

    def __init__(self, size: int = 32, ttl: float = 60.0) -> None:
        self._size = size
        self._ttl = ttl
        self._lock = threading.Lock()
        self._items: dict[tuple[str, int], tuple[float, Report]] = {}

    def get(self, version: Version) -> Report:
        key = (version.cluster, version.number)
        now = time.monotonic()
        with self._lock:
            found = self._items.get(key)
        if found is not None and now - found[0] < self._ttl:
            return found[1]
        from egressguard.catalog import references

        report = analyze(version.policy, references())
        with self._lock:
            self._items.pop(key, None)
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = (now, report)
        return report


@dataclass(frozen=True)
class ProcessStats:
    """This process's Prometheus counters (when `serve` runs the API beside the gateway;
    zero in an API-only process)."""

    open_connections: int
    open_tunnels: int
    revoked: int
    audit: dict[str, int]               # written | dropped | failed | invalid -> events
    audit_pending: int
    exfil_warnings: dict[str, int]      # host -> warnings


def _samples(metric: Any) -> list[tuple[dict[str, str], float]]:
    """A metric's current values (the `_total`/plain samples, not `_created`)."""
    return [(s.labels, s.value) for family in metric.collect() for s in family.samples
            if not s.name.endswith("_created")]


def process_stats() -> ProcessStats:
    from egressguard.audit import metrics as m

    def one(metric: Any) -> int:
        return int(sum(v for _, v in _samples(metric)))

    def by(metric: Any, label: str) -> dict[str, int]:
        return {labels[label]: int(v) for labels, v in _samples(metric)}

    return ProcessStats(open_connections=one(m.OPEN_CONNECTIONS),
                        open_tunnels=one(m.OPEN_TUNNELS), revoked=one(m.REVOKED),
                        audit=by(m.AUDIT_EVENTS, "result"),
                        audit_pending=one(m.AUDIT_PENDING),
                        exfil_warnings=by(m.EXFIL_WARNINGS, "host"))


def history(store: Store, cluster: str, limit: int = 20) -> list[Version]:
    return store.versions(cluster, limit=limit)
