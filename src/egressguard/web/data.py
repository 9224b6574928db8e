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

from sqlalchemy import Engine, Integer, cast, func, select

from egressguard.analysis import Report, analyze
from egressguard.audit.query import Filter, Reader, event_rows, outcome_of, query, to_record
from egressguard.audit.schema import events
from egressguard.control.inforce import PolicyBook
from egressguard.store import Version


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


@dataclass(frozen=True)
class IdentityTraffic:
    """One workload identity's decisions and bytes in a window ("" = anonymous callers)."""

    identity: str
    allowed: int
    denied: int
    would_deny: int
    bytes_up: int
    bytes_down: int
    connections: int


ANONYMOUS = "(anonymous)"  # how pages and filters name callers without an identity
IDENTITY_ROWS = 20_000   # records opened per by-identity panel (the newest in the window)
_IDENTITY_PHASES = ("decision", "close", "exchange")


def by_identity(engine: Engine, sealer: Reader, cluster: str, since: float,
                rows: int | None = None, limit: int = 25
                ) -> tuple[list[IdentityTraffic], bool]:
    """Decisions by outcome and bytes per identity since `since`, busiest first, and
    whether the window held more than `rows` records (then only the newest `rows` count).
    The identity is sealed, so the database cannot group by it: the newest `rows`
    records are opened and summed here."""
    rows = IDENTITY_ROWS if rows is None else rows
    c = events.c
    stmt = (event_rows().where(*Filter(since=since, cluster=cluster).where(),
                               c.phase.in_(_IDENTITY_PHASES))
            .order_by(c.id.desc()).limit(rows + 1))
    with engine.connect() as conn:
        found = [to_record(row, sealer) for row in conn.execute(stmt)]
    sums: dict[str, list[int]] = {}
    for r in found[:rows]:
        s = sums.setdefault(str(r.get("client_identity") or ""), [0] * 6)
        if r["phase"] in ("decision", "exchange"):
            s[("allow", "deny", "would-deny").index(r["outcome"])] += 1
        if r["phase"] in ("close", "exchange"):
            s[3] += r["bytes_up"]
            s[4] += r["bytes_down"]
            s[5] += 1
    out = sorted((IdentityTraffic(name, *v) for name, v in sums.items()),
                 key=lambda t: (-(t.allowed + t.denied + t.would_deny), -t.bytes_up,
                                t.identity))
    return out[:limit], len(found) > rows


def recent_denials(engine: Engine, sealer: Reader, cluster: str, limit: int = 20
                   ) -> list[dict[str, Any]]:
    """The newest denied decisions, enforced or report-only, with their reasons."""
    c = events.c
    stmt = (event_rows().where(*Filter(cluster=cluster, phase="decision").where(),
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


def history(store: PolicyBook, cluster: str, limit: int = 20) -> list[Version]:
    return store.versions(cluster, limit=limit)


# --- charts and the live view -------------------------------------------------------

# Columns every role that sees decisions may read (all in clear); auditors also get the
# sealed identity, the policy version in force and the sealed reason.
DECISION_FIELDS = ("id", "time", "kind", "host", "port", "outcome", "layer", "rule")
AUDIT_FIELDS = ("client_identity", "policy_version", "reason")
TOP_SERIES_HOSTS = 5


@dataclass(frozen=True)
class DeniedDestination:
    host: str
    port: int | None
    kind: str
    outcome: str        # deny | would-deny
    count: int
    last: float


def bucket_seconds(window: float, buckets: int = 60) -> int:
    """A round bucket width giving about `buckets` points over `window`."""
    for width in (10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 86400):
        if window / width <= buckets:
            return width
    return 86400


def _bucket(engine: Engine, width: int) -> Any:
    """The bucket number of an event's time, floored (portable: PostgreSQL rounds a
    CAST, SQLite truncates, so each dialect gets the form that floors)."""
    c = events.c
    if engine.dialect.name == "postgresql":
        return func.floor(c.time / width)
    return cast(c.time / width, Integer)


def decision_series(engine: Engine, cluster: str, since: float, until: float,
                    dest: str | None = None) -> dict[str, Any]:
    """Decisions per bucket by outcome: {"width", "times", "allow", "deny", "would-deny"}."""
    width = bucket_seconds(until - since)
    first = int(since // width)
    count = int(until // width) - first + 1
    series = {o: [0] * count for o in ("allow", "deny", "would-deny")}
    c = events.c
    bucket = _bucket(engine, width).label("b")
    stmt = (select(bucket, c.verdict, c.permitted, func.count())
            .where(*Filter(since=since, until=until, cluster=cluster, phase="decision",
                           dest=dest).where())
            .group_by(bucket, c.verdict, c.permitted))
    with engine.connect() as conn:
        for b, verdict, permitted, n in conn.execute(stmt):
            i = int(b) - first
            if 0 <= i < count:
                series[outcome_of(verdict, bool(permitted))][i] += int(n)
    return {"width": width, "times": [(first + i) * width for i in range(count)], **series}


def bytes_series(engine: Engine, cluster: str, since: float, until: float,
                 dest: str | None = None, hosts: int = TOP_SERIES_HOSTS) -> dict[str, Any]:
    """Bytes sent per bucket for the `hosts` destinations that sent most in the window:
    {"width", "times", "hosts": {host: [bytes...]}} (counted when a connection closes)."""
    width = bucket_seconds(until - since)
    first = int(since // width)
    count = int(until // width) - first + 1
    c = events.c
    where = Filter(since=since, until=until, cluster=cluster, phase="close", dest=dest).where()
    up = func.sum(c.bytes_up)
    top = (select(c.host).where(*where).group_by(c.host).order_by(up.desc(), c.host)
           .limit(hosts))
    bucket = _bucket(engine, width).label("b")
    with engine.connect() as conn:
        names = [h for (h,) in conn.execute(top)]
        out = {h: [0] * count for h in names}
        if names:
            stmt = (select(bucket, c.host, up).where(*where, c.host.in_(names))
                    .group_by(bucket, c.host))
            for b, host, n in conn.execute(stmt):
                i = int(b) - first
                if 0 <= i < count:
                    out[host][i] += int(n or 0)
    return {"width": width, "times": [(first + i) * width for i in range(count)],
            "hosts": out}


def top_denied(engine: Engine, cluster: str, since: float, dest: str | None = None,
               limit: int = 15) -> list[DeniedDestination]:
    """Denied decisions in the window grouped by destination (host, port, kind, enforced or
    report-only), most frequent first: what to look at, and what to propose allowing."""
    c = events.c
    n = func.count()
    stmt = (select(c.host, c.port, c.kind, c.permitted, n, func.max(c.time))
            .where(*Filter(since=since, cluster=cluster, phase="decision", dest=dest).where(),
                   c.verdict == "deny")
            .group_by(c.host, c.port, c.kind, c.permitted)
            .order_by(n.desc(), c.host, c.port).limit(limit))
    with engine.connect() as conn:
        return [DeniedDestination(host, None if port is None else int(port), kind,
                                  outcome_of("deny", bool(permitted)), int(count),
                                  float(last))
                for host, port, kind, permitted, count, last in conn.execute(stmt)]


def decisions_after(engine: Engine, sealer: Reader | None, cluster: str, after: int,
                    outcome: str | None = None, dest: str | None = None,
                    limit: int = 100) -> list[dict[str, Any]]:
    """Decisions with an id above `after`, oldest first, at most `limit` (the live view).
    With no `sealer` the sealed fields are not opened (a role that may not read them)."""
    c = events.c
    stmt = (event_rows().where(*Filter(cluster=cluster, phase="decision", outcome=outcome,
                                         dest=dest).where(), c.id > after)
            .order_by(c.id).limit(limit))
    with engine.connect() as conn:
        return [to_record(row, sealer) for row in conn.execute(stmt)]


def newest_id(engine: Engine) -> int:
    """The newest audit record's id (0 when the log is empty): where a live view starts."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(events.c.id))).scalar() or 0)


def recent_decisions(engine: Engine, sealer: Reader | None, cluster: str,
                     outcome: str | None = None, dest: str | None = None,
                     limit: int = 25, identity: str | None = None,
                     since: float | None = None) -> list[dict[str, Any]]:
    """The newest decisions, newest first (the live table's first rows). `identity`
    (sealed: needs `sealer`) is matched after opening, reading back no further than
    `since`."""
    if identity is not None:
        flt = Filter(since=since, cluster=cluster, phase="decision", outcome=outcome,
                     dest=dest, identity=identity)
        return query(engine, flt, sealer=sealer, limit=limit)
    c = events.c
    stmt = (event_rows().where(*Filter(cluster=cluster, phase="decision", outcome=outcome,
                                         dest=dest).where())
            .order_by(c.id.desc()).limit(limit))
    with engine.connect() as conn:
        return [to_record(row, sealer) for row in conn.execute(stmt)]


def visible(record: dict[str, Any], audit: bool) -> dict[str, Any]:
    """The part of a decision record a role may see (`audit`: auditor or admin)."""
    fields = DECISION_FIELDS + AUDIT_FIELDS if audit else DECISION_FIELDS
    return {k: record.get(k) for k in fields}
