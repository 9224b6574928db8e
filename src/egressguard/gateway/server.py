"""The enforcing gateway: accepts workload connections and applies the policy in force.

`Gateway(holder, sink, resolver, limits)` is all a composition needs: whoever owns the
policy (a file watcher, the control plane's store) swaps snapshots in the holder, and the
gateway re-decides what it is relaying on every swap.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from egressguard import metrics
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.enforce.events import CloseCause, EventSink
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.engine.normalize import IPAddress
from egressguard.gateway.auth import Authenticator
from egressguard.gateway.budgets import Budgets
from egressguard.gateway.connection import ClientConnection, ConnState
from egressguard.gateway.limits import Limits, admission_refusal
from egressguard.gateway.pool import Pool
from egressguard.gateway.resolver import Resolver
from egressguard.gateway.upstream import Upstream
from egressguard.identity.directory import IdentityHolder
from egressguard.identity.tokens import JwtConfig

log = logging.getLogger("egressguard.gateway")
_SWEEP_SECONDS = 0.25
# Tunnels have only the idle deadline (minutes by default): they are kept in their own set
# and swept at most every this many seconds (a quarter of the idle timeout when shorter), so
# thousands of idle tunnels cost a few hundred microseconds a second and no timer each.
_TUNNEL_SWEEP_SECONDS = 4.0


class Gateway:
    """An HTTP/1.1 forward proxy with CONNECT, enforcing `holder.current`."""

    def __init__(self, holder: SnapshotHolder, sink: EventSink | None = None,
                 resolver: Resolver | None = None, limits: Limits | None = None, *,
                 report_only: bool = False, cluster: str = "default",
                 identities: IdentityHolder | None = None,
                 jwt: JwtConfig | None = None) -> None:
        self.holder = holder
        # Who is calling: the store's identities, the policy's and the JWT issuer's keys.
        self.identities = identities
        self.auth = Authenticator(holder, identities, jwt)
        self.resolver = resolver or Resolver()
        self.limits = limits or Limits()
        # decide -> report-only -> metrics -> event -> record, as at every other point.
        self.checkpoint = Checkpoint(holder, sink, report_only=report_only, cluster=cluster,
                                     point="gateway", audit_timeout=self.limits.audit_timeout)
        self.budgets = Budgets(self.checkpoint)  # byte budgets of the policy in force
        self.clients: set[ClientConnection] = set()
        self.tunnels: set[ClientConnection] = set()  # the clients relaying a tunnel
        self.per_source: dict[IPAddress | None, int] = {}  # open connections by address
        self.capped: set[IPAddress | None] = set()  # sources refused since last below cap
        self.draining = False
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._unsubscribe: object = None
        self._unsubscribe_identities: object = None
        self._bytes_up = metrics.BYTES.labels("up")
        self._bytes_down = metrics.BYTES.labels("down")
        self.pool = Pool()   # idle upstream HTTP connections shared by all clients
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.checkpoint.on_suspend(self._suspension)

    @property
    def report_only(self) -> bool:
        """The `serve --report-only` switch (ORed with the policy's, see the checkpoint)."""
        return self.checkpoint.report_only

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 3128, *,
                    reuse_port: bool = False) -> None:
        """Listen on `host:port`; `reuse_port` (SO_REUSEPORT) lets the workers of one
        `serve --workers N` share the port, the kernel spreading connections over them."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_address=True,
            reuse_port=reuse_port or None)
        self._unsubscribe = self.holder.subscribe(self._swapped)
        if self.identities is not None:
            self._unsubscribe_identities = self.identities.subscribe(self._identities_swapped)
        self._sweeper = self.loop.create_task(self._sweep())

    async def start_tls(self, host: str, port: int, context: ssl.SSLContext, *,
                        reuse_port: bool = False) -> None:
        """Also listen for TLS connections (mTLS: `gateway/mtls.py`); after `start`.
        `reuse_port` as for `start` (the workers of `serve --workers N`)."""
        self._tls_server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_address=True,
            reuse_port=reuse_port or None, ssl=context,
            ssl_handshake_timeout=self.limits.header_timeout)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the gateway listens (host, port), e.g. after binding port 0."""
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    @property
    def tls_addresses(self) -> list[tuple[str, int]]:
        """Where the TLS listener listens (empty without one)."""
        server = self._tls_server
        return [s.getsockname()[:2] for s in server.sockets] if server is not None else []

    async def stop(self, deadline: float | None = None) -> None:
        """Stop accepting; let open requests finish up to `deadline` seconds; close the rest."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        for unsubscribe in (self._unsubscribe, self._unsubscribe_identities):
            if callable(unsubscribe):
                unsubscribe()
        for client in list(self.clients):
            if client.state is ConnState.IDLE and not client.queue:
                client.close("shutdown")
        limit = self.limits.shutdown_deadline if deadline is None else deadline
        end = self.loop.time() + limit
        while self.clients and self.loop.time() < end:
            await asyncio.sleep(0.05)
        for client in list(self.clients):
            client.close("shutdown")
        self.pool.close_all()
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

    def tunnelled(self, client: ClientConnection) -> None:
        """`client` relays a tunnel from now on (swept on the tunnels' slower cadence)."""
        if client in self.clients:
            self.tunnels.add(client)

    def forget(self, client: ClientConnection) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.tunnels.discard(client)
            metrics.OPEN_CONNECTIONS.dec()
            source = client.source
            left = self.per_source.get(source, 1) - 1
            if left > 0:
                self.per_source[source] = left
            else:
                self.per_source.pop(source, None)
                self.capped.discard(source)

    def count_bytes(self, up: int, down: int) -> None:
        if up:
            self._bytes_up.inc(up)
        if down:
            self._bytes_down.inc(down)

    # -- the shared upstream pool ----------------------------------------------------------

    def park(self, up: Upstream) -> None:
        """Keep an idle upstream HTTP connection for the next request to the same host."""
        if self.draining:
            up.close()
        else:
            self.pool.park(up, self.loop.time())

    # -- policy swaps and deadlines --------------------------------------------------------

    def _swapped(self, active: Active) -> None:
        # May be called from any thread (the control plane's change feed).
        log.info("gateway: policy %s from %s in force", active.version, active.source)
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.recheck)

    def _suspension(self, reason: str | None) -> None:
        """The checkpoint's hook (any thread): on suspension close every connection and
        tunnel and drop the idle upstream pool; each new request is answered 503 with the
        reason once its head is read (`ClientConnection._dispatch`: answering before
        reading it would reset the connection and lose the answer)."""
        if reason is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._close_all, "suspended")

    def _close_all(self, cause: CloseCause) -> None:
        for client in list(self.clients):
            client.close(cause, final=True)
        self.pool.close_all()
    def _identities_swapped(self) -> None:
        # From the identity follower's thread: a revocation is applied on the loop.
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.recheck)

    def recheck(self) -> int:
        """Re-decide every open tunnel and in-flight request; returns how many closed."""
        self.auth.refresh()  # the next request on every connection re-resolves its caller
        return sum(client.recheck() for client in list(self.clients))

    async def _sweep(self) -> None:
        every = max(1, int(min(_TUNNEL_SWEEP_SECONDS, self.limits.idle_timeout / 4)
                           / _SWEEP_SECONDS))
        tick = 0
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            if self.auth.refresh():  # an identity's expiry passed
                self.recheck()
            now = self.loop.time()
            tick += 1
            if tick % every == 0:
                for client in list(self.clients):
                    client.sweep(now)
            else:  # the set difference runs in C: no Python step per idle tunnel
                for client in self.clients - self.tunnels:
                    client.sweep(now)
            self.pool.expire(now)
