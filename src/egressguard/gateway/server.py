"""The enforcing gateway: accepts workload connections and applies the policy in force.

`Gateway(holder, sink, resolver, limits)` is all a composition needs: whoever owns the
policy (a file watcher, the control plane's store) swaps snapshots in the holder, and the
gateway re-decides what it is relaying on every swap.
"""

from __future__ import annotations

import asyncio
import logging
import time

from egressguard.audit import metrics
from egressguard.audit.events import (
    CloseCause,
    DecisionEvent,
    EventSink,
    NullSink,
    emit_durably,
)
from egressguard.engine import Decision, Kind, Request
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.engine.normalize import IPAddress
from egressguard.gateway.connection import ClientConnection, Upstream
from egressguard.gateway.limits import Limits, admission_refusal
from egressguard.gateway.resolver import Resolver

log = logging.getLogger("egressguard.gateway")
_SWEEP_SECONDS = 0.25
_POOL_PER_KEY = 32        # idle upstream connections kept per (host, port)
_POOL_IDLE_SECONDS = 30.0
_CACHE_SIZE = 4096        # memoised decisions per snapshot


class Gateway:
    """An HTTP/1.1 forward proxy with CONNECT, enforcing `holder.current`."""

    def __init__(self, holder: SnapshotHolder, sink: EventSink | None = None,
                 resolver: Resolver | None = None, limits: Limits | None = None, *,
                 report_only: bool = False, cluster: str = "default") -> None:
        self.holder = holder
        self.sink: EventSink = sink or NullSink()
        # Without an audit sink no event is built at all (the counters still are).
        self.recording = not isinstance(self.sink, NullSink)
        self.resolver = resolver or Resolver()
        self.limits = limits or Limits()
        self.report_only = report_only
        self.cluster = cluster
        self.clients: set[ClientConnection] = set()
        self.per_source: dict[IPAddress | None, int] = {}  # open connections by address
        self.capped: set[IPAddress | None] = set()  # sources refused since last below cap
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe: object = None
        self._counters: dict[tuple[str, str, str, bool], object] = {}
        self._cached_snapshot: object = None
        self._cache: dict[Request, Decision] = {}
        self._bytes_up = metrics.BYTES.labels("up")
        self._bytes_down = metrics.BYTES.labels("down")
        # Idle upstream HTTP connections shared by all clients, keyed by (host, port).
        self.pool: dict[tuple[str, int], list[Upstream]] = {}
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 3128) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_address=True)
        self._unsubscribe = self.holder.subscribe(self._swapped)
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the gateway listens (host, port), e.g. after binding port 0."""
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def stop(self, deadline: float | None = None) -> None:
        """Stop accepting; let open requests finish up to `deadline` seconds; close the rest."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        if callable(self._unsubscribe):
            self._unsubscribe()
        for client in list(self.clients):
            if client.state == "idle" and not client.queue:
                client.close("shutdown")
        limit = self.limits.shutdown_deadline if deadline is None else deadline
        end = self.loop.time() + limit
        while self.clients and self.loop.time() < end:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.close("shutdown")
        for idle in [up for ups in self.pool.values() for up in ups]:
            idle.close()
        self.pool.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._server = None

    # -- what connections call -------------------------------------------------------------

    def admit(self, client: ClientConnection) -> str | None:
        """Take `client` on, or say why not (it is then answered 503 and closed)."""
        source = client.source
        from_source = self.per_source.get(source, 0)
        refusal = admission_refusal(self.limits, len(self.clients), from_source,
                                    self.draining)
        if refusal is not None:
            if from_source >= self.limits.max_connections_per_source \
                    and source not in self.capped:
                self.capped.add(source)  # one line per episode, not one per connection
                log.warning("gateway: %s holds %d connections (the per-source cap); refusing "
                            "more from it", source, from_source)
            return refusal
        self.per_source[source] = from_source + 1
        self.clients.add(client)
        metrics.OPEN_CONNECTIONS.inc()
        return None

    def forget(self, client: ClientConnection) -> None:
        if client in self.clients:
            self.clients.discard(client)
            metrics.OPEN_CONNECTIONS.dec()
            source = client.source
            left = self.per_source.get(source, 1) - 1
            if left > 0:
                self.per_source[source] = left
            else:
                self.per_source.pop(source, None)
                self.capped.discard(source)

    def decide(self, request: Request) -> tuple[Decision, bool]:
        """The engine's decision and whether to let it through (report-only permits all)."""
        snapshot = self.holder.current
        if snapshot is not self._cached_snapshot or len(self._cache) > _CACHE_SIZE:
            self._cached_snapshot, self._cache = snapshot, {}
        decision = self._cache.get(request)
        if decision is None:
            # Decisions are pure functions of (snapshot, request): safe to memoise.
            t0 = time.perf_counter()
            decision = self._cache[request] = snapshot.decide(request)
            metrics.DECISION_SECONDS.observe(time.perf_counter() - t0)  # engine only
        return decision, decision.permitted or self.report_only

    def note_decision(self, client: ClientConnection, decision: Decision, permitted: bool,
                      kind: Kind) -> None:
        """Count every enforced decision (and log those that are not plain allows)."""
        key = (kind.value, decision.verdict.value, decision.layer.value, permitted)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.DECISIONS.labels(
                kind.value, decision.verdict.value, decision.layer.value,
                "true" if permitted else "false")
        counter.inc()  # type: ignore[attr-defined]
        if not decision.allowed:
            log.info("gateway: %s %s %s %s (%s: %s)%s", client.peer,
                     "report-only" if permitted else "deny", kind.value,
                     decision.destination, decision.rule, decision.reason,
                     " would be denied" if permitted else "")

    def decision_event(self, client: ClientConnection, decision: Decision, permitted: bool,
                       kind: Kind, conn_id: str, address: str, method: bytes,
                       path: bytes) -> DecisionEvent:
        """The audit event of a decision (the caller emits or records it)."""
        host, _, port_text = decision.destination.rpartition(":")
        if not host or not port_text.isdigit():
            host = decision.destination
        return DecisionEvent(
            time=time.time(), cluster=self.cluster, kind=kind.value, host=host,
            port=decision.port, verdict=decision.verdict.value, permitted=permitted,
            layer=decision.layer.value, rule=decision.rule, reason=decision.reason,
            policy_version=self.holder.active.version, connection_id=conn_id,
            client_address=client.peer, resolved_address=address,
            method=method.decode("latin-1"), path=path.decode("latin-1")[:2048])

    async def record(self, event: DecisionEvent) -> None:
        """Make a refusal's event durable before the client sees the refusal.

        Fails closed: when the audit log cannot confirm in `limits.audit_timeout` seconds
        (or fails), the error is logged and the caller refuses all the same.
        """
        try:
            await asyncio.wait_for(emit_durably(self.sink, event), self.limits.audit_timeout)
        except TimeoutError as exc:   # AuditUnavailable is a TimeoutError
            log.error("gateway: refusal of %s:%s not confirmed durable by the audit log "
                      "(%s); refusing anyway", event.host, event.port,
                      exc or f"no answer in {self.limits.audit_timeout:g} s")
        except Exception:
            log.exception("gateway: audit record of a refusal failed; refusing anyway")

    def count_bytes(self, up: int, down: int) -> None:
        if up:
            self._bytes_up.inc(up)
        if down:
            self._bytes_down.inc(down)

    def close_event(self, opened: DecisionEvent, cause: CloseCause, up: int, down: int,
                    duration: float) -> DecisionEvent:
        """The close event of a permitted connection."""
        return DecisionEvent(
            time=time.time(), cluster=opened.cluster, kind=opened.kind, host=opened.host,
            port=opened.port, verdict=opened.verdict, permitted=opened.permitted,
            layer=opened.layer, rule=opened.rule, reason=opened.reason,
            policy_version=opened.policy_version, phase="close",
            connection_id=opened.connection_id, client_address=opened.client_address,
            resolved_address=opened.resolved_address, method=opened.method,
            path=opened.path, bytes_up=up, bytes_down=down, duration_s=duration,
            close_cause=cause)

    # -- the shared upstream pool ----------------------------------------------------------

    def park(self, up: Upstream) -> None:
        """Keep an idle upstream HTTP connection for the next request to the same host."""
        idle = self.pool.setdefault(up.key, []) if up.key is not None else None
        if idle is None or up.closed or not up.idle or self.draining or \
                len(idle) >= _POOL_PER_KEY:
            up.close()
            return
        up.parked_at = self.loop.time()
        idle.append(up)

    def take(self, key: tuple[str, int], addresses: tuple[IPAddress, ...],
             client: ClientConnection) -> Upstream | None:
        """An idle connection to `key` whose address is one of the checked `addresses`."""
        idle = self.pool.get(key)
        while idle:
            up = idle.pop()
            up.parked_at = 0.0
            if up.closed or up.ip not in addresses:
                up.close()
                continue
            up.client = client
            return up
        return None

    def unpark(self, up: Upstream) -> None:
        idle = self.pool.get(up.key) if up.key is not None else None
        if idle is not None and up in idle:
            idle.remove(up)
        up.parked_at = 0.0

    def _expire_pool(self, now: float) -> None:
        for idle in self.pool.values():
            for up in [u for u in idle if now - u.parked_at > _POOL_IDLE_SECONDS]:
                idle.remove(up)
                up.parked_at = 0.0
                up.close()

    def emit(self, event: DecisionEvent) -> None:
        """Fire-and-forget (permitted calls and close events); a failing sink is logged."""
        try:
            self.sink.emit(event)
        except Exception:
            log.exception("gateway: event sink failed")

    # -- policy swaps and deadlines --------------------------------------------------------

    def _swapped(self, active: Active) -> None:
        # May be called from any thread (the control plane's change feed).
        log.info("gateway: policy %s from %s in force", active.version, active.source)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.recheck)

    def recheck(self) -> int:
        """Re-decide every open tunnel and in-flight request; returns how many closed."""
        return sum(client.recheck() for client in list(self.clients))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = self.loop.time()
            for client in list(self.clients):
                client.sweep(now)
            self._expire_pool(now)
