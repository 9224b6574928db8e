"""One client connection: HTTP/1.1 forwarding and CONNECT tunnels, relayed at the
protocol level (asyncio `Protocol` callbacks, no stream readers on the data path).

Bytes flow straight from one transport's `data_received` into the other's `write`, with
flow control coupled both ways (a full write buffer pauses the opposite reader). A tunnel
whose first client bytes passed the check is handed to `splice.SpliceRelay` (zero-copy,
in the kernel) where the platform allows; otherwise it stays on this protocol relay. An HTTP
request is handled inside the parser callback when nothing needs waiting (the target's
addresses are known, an idle upstream connection is at hand): the common keep-alive
request costs no task and no future. Only what must wait (a DNS lookup, a new upstream
connection, the audit record of a refusal, a CONNECT) runs as a task.

What the gateway decides on its own is in `decide` (pure); the verdicts, report-only,
counters and audit records go through the checkpoint; the upstream is driven through its
methods and talks back through `UpstreamOwner`. The connection's one state, `ConnState`,
is changed only in this module. Transitions:

    IDLE   -> HEAD (a request head begins) | CLOSED
    HEAD   -> BUSY (the head is complete) | CLOSED (malformed, too large, too slow)
    BUSY   -> BUSY (the next queued request) | IDLE (all answered) | PEEK (a CONNECT is
              established) | CLOSED (refused with close, upstream failure, limits)
    PEEK   -> TUNNEL (the first client bytes passed) | CLOSED (refused)
    TUNNEL -> CLOSED
    CLOSED    final

A head that begins while a request is still BUSY (pipelining) keeps the state BUSY; a
refusal waiting for its audit record (`refusing`) relays nothing in any state.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine
from typing import Protocol, cast

import httptools

from egressguard import metrics
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.enforce.events import SHORT_EXCHANGE_S, CloseCause, DecisionEvent
from egressguard.engine import Decision, Kind, Request
from egressguard.engine.holder import SnapshotHolder
from egressguard.engine.normalize import Host, IPAddress
from egressguard.gateway import auth, decide, http1, tls
from egressguard.gateway.budgets import Budgets, Metered, too_many
from egressguard.gateway.limits import Limits, deadline_breach
from egressguard.gateway.pool import Pool
from egressguard.gateway.resolver import ResolveError, Resolver
from egressguard.gateway.splice import SpliceRelay
from egressguard.gateway.upstream import Exchange, Upstream, UpstreamError

log = logging.getLogger("egressguard.gateway")
_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_CRLF = b"\r\n"



_ABORT = ("revoked", "shutdown", "timeout", "budget", "suspended")  # causes that reset both sockets
_TEXTS: dict[int, tuple[tuple[IPAddress, ...], str]] = {}  # see `first_address_text`


def first_address_text(addresses: tuple[IPAddress, ...]) -> str:
    """The first address as text (the audit record's resolved address), worked out once
    per address tuple: the resolver cache hands out the same tuple for a name until its
    TTL ends, and `str` of an address costs more than the rest of a request's routing.
    Keyed by identity; the entry holds the tuple, so its id cannot be reused meanwhile."""
    if not addresses:
        return ""
    found = _TEXTS.get(id(addresses))
    if found is not None and found[0] is addresses:
        return found[1]
    if len(_TEXTS) >= 4096:
        _TEXTS.clear()
    text = str(addresses[0])
    _TEXTS[id(addresses)] = (addresses, text)
    return text


class ConnState(enum.Enum):
    IDLE = "idle"        # between requests
    HEAD = "head"        # a request head is arriving
    BUSY = "busy"        # requests are being answered
    PEEK = "peek"        # a tunnel is open; its first client bytes are being checked
    TUNNEL = "tunnel"    # relaying both ways
    CLOSED = "closed"


IDLE, HEAD, BUSY = ConnState.IDLE, ConnState.HEAD, ConnState.BUSY
PEEK, TUNNEL, CLOSED = ConnState.PEEK, ConnState.TUNNEL, ConnState.CLOSED
_HTTP = Kind.HTTP  # bound once: an enum attribute costs ~170 ns on the keep-alive path


class Route:
    """Where one request goes, as parsed and checked; reused by the next request on the
    same connection that names the same target the same way (same URL and Host bytes).

    The decision is reused only under the same policy snapshot and for the same address
    tuple (static or literal addresses: the very same object), so it is always the
    decision the engine would give now.
    """

    __slots__ = ("address_text", "addresses", "decided_for", "decision", "host",
                 "host_header", "host_line", "key", "path", "path_text", "permitted", "port",
                 "request", "snapshot", "target", "url")

    def __init__(self, url: bytes, host_header: bytes, host: Host, port: int, target: bytes,
                 path: bytes, addresses: tuple[IPAddress, ...] | None,
                 host_line: bytes = b"") -> None:
        self.url = url
        self.host_header = host_header
        self.host_line = host_line   # the Host to add upstream (HTTP/1.0 without one)
        self.host = host
        self.port = port
        self.key = (host.name, port)
        self.target = target
        self.path = path
        self.path_text = path.decode("latin-1")
        self.addresses = addresses   # None: looked up per request (system resolver)
        self.address_text = first_address_text(addresses) if addresses else ""
        self.snapshot: object = None
        self.decided_for: tuple[IPAddress, ...] | None = None
        self.request: Request | None = None
        self.decision: Decision | None = None
        self.permitted = False

    def adopt(self, previous: Route) -> None:
        """Take over `previous`'s decision when only the path differs (the decision does
        not depend on the path of an HTTP request)."""
        if previous.key == self.key and previous.addresses is not None \
                and previous.addresses == self.addresses:
            self.addresses = previous.addresses
            self.address_text = previous.address_text
            self.snapshot, self.decided_for = previous.snapshot, previous.decided_for
            self.request, self.decision = previous.request, previous.decision
            self.permitted = previous.permitted


class ConnectionHost(Protocol):
    """What a client connection needs from the gateway that accepted it (`server.Gateway`;
    a protocol, so that this module never imports the server)."""

    loop: asyncio.AbstractEventLoop
    limits: Limits
    resolver: Resolver
    holder: SnapshotHolder
    checkpoint: Checkpoint
    budgets: Budgets
    pool: Pool
    draining: bool
    auth: auth.Authenticator

    def admit(self, client: ClientConnection) -> str | None: ...
    def forget(self, client: ClientConnection) -> None: ...
    def tunnelled(self, client: ClientConnection) -> None: ...
    def park(self, up: Upstream) -> None: ...
    def count_bytes(self, up: int, down: int) -> None: ...


class ClientConnection(asyncio.Protocol):
    """A workload's connection to the gateway."""

    def __init__(self, gateway: ConnectionHost) -> None:
        self.gw = gateway
        self.cp = gateway.checkpoint
        self.loop = gateway.loop
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        self.peer = ""
        self.source: IPAddress | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True
        self.queue: deque[Exchange] = deque()
        self.receiving: Exchange | None = None
        self.upstream: Upstream | None = None
        # (policy snapshot, identity) under which `upstream` was opened or taken for a
        # request (see `_carries`).
        self.granted: tuple[object, str | None] | None = None
        self.paused: set[str] = set()
        self.accepted = 0.0
        self.served = False       # a request head was completed (see limits.deadline_breach)
        self.head_started = 0.0
        self.head_bytes = 0
        self.reads = 0            # data_received calls, to tell in which read a head began
        self.head_read = 0
        self.head_fields = 0
        self.in_head = False
        self.too_large = False
        self.runner: asyncio.Task[None] | None = None
        # What is being relayed now (re-decided on every policy swap).
        self.active: Request | None = None
        self.would_revoke: Request | None = None  # recorded as a would-deny (report-only)
        self.started = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.activity_seen = 0
        self.idle_since = 0.0
        self.client_eof = False
        self.dest_eof = False
        self.peek = b""
        self.connect_host = ""
        self.connect_port = 0
        self.connect_is_ip = False
        self.connected_ip: IPAddress | None = None
        self.open_event: DecisionEvent | None = None
        # The open exchange's decision record is not yet emitted: it becomes one
        # "exchange" record at the close, or is emitted by `sweep` / `_undefer` first.
        self.deferred = False
        self.closed = False
        # A refusal is waiting for its audit record: nothing is relayed, the client waits.
        self.refusing = False
        self.refusal_task: asyncio.Task[None] | None = None
        self.working = False      # the exchange at the head of the queue is being handled
        self.dispatching = False
        self.counting = False     # a permitted exchange or tunnel whose bytes are counted
        self.route: Route | None = None
        self.relay: SpliceRelay | None = None  # a tunnel relayed by os.splice (zero-copy)
        self.held: int | None = None  # a spliced client's socket awaiting its cut (_refuse)
        self.caller: auth.ConnAuth = None  # type: ignore[assignment]  # connection_made
        self.identity = ""        # the current request's identity ("" anonymous)
        self.meter: Metered | None = None  # byte budgets of what is relayed now
        self._url = b""
        self._headers: http1.Headers = []

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.idle_since = self.accepted = self.loop.time()
        transport = self.transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            try:
                self.source = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
            except ValueError:
                self.source = None
        refusal = self.gw.admit(self)
        if refusal is not None:
            transport.write(http1.error(503, "Service Unavailable", refusal))
            self.closed = True
            self.state = CLOSED
            transport.close()
            return
        self.caller = auth.ConnAuth(self.gw.auth, self.cp, self.source, self.peer,
                                    auth.certificate_names(transport.get_extra_info(
                                        "peercert")))

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is TUNNEL:
            if self.meter is not None and self._over_budget(len(data), 0):
                return
            self.bytes_up += len(data)
            self.upstream.write(data)  # type: ignore[union-attr]
            return
        if state is PEEK:
            self._peek(data)
            return
        if state is CLOSED:
            return
        self.reads += 1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0]:])
        except httptools.HttpParserError as exc:
            self._malformed(exc)
        else:
            if self.in_head and not self.too_large and self.head_read != self.reads:
                # A head begun in an earlier read and still incomplete after this one: all
                # of this read was head bytes (httptools buffers an unfinished header line
                # without telling us). A head begun in this read may follow pipelined
                # messages, so only its parsed fields count until the next read.
                self.head_bytes += len(data)
                if self.head_bytes > self.gw.limits.max_header_bytes:
                    self.too_large = True
            if self.too_large:
                self.fail(431, "Request Header Fields Too Large",
                          f"request head larger than {self.gw.limits.max_header_bytes} bytes")

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state is TUNNEL:
            if self.upstream is not None:
                self.upstream.write_eof()
            if self.dest_eof:
                self.close("client")
            return True
        if self.receiving is not None or (self.queue and self.queue[0].method == b"CONNECT"):
            # A request cut short can never complete, and a tunnel to a client that has
            # stopped sending is pointless: release both sockets now, not after idle_timeout.
            self.close("client")
            return False
        if self.queue or self.state is BUSY:
            return True  # half-closed after the request: still answer it
        self.close("client")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is not None:
            return  # the transport let go of the socket: the splice relay has it
        self.close("client")

    def pause_writing(self) -> None:
        if self.upstream is not None and self.relay is None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.relay is None:
            self.upstream.resume_reading()

    def pause_reading(self, reason: str) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self.paused:
            return
        self.paused.discard(reason)
        if not self.paused and self.transport is not None and not self.closed \
                and self.relay is None:  # a spliced tunnel's sockets are the relay's
            self.transport.resume_reading()

    # -- request parser callbacks (httptools) --------------------------------------------

    def on_message_begin(self) -> None:
        if not self.queue and self.state is IDLE:
            self.state = HEAD
        self.in_head = True
        self.head_started = self.loop.time()
        self.head_bytes = self.head_fields = 0
        self.head_read = self.reads
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._count(len(name) + len(value) + 4)

    def _count(self, n: int) -> None:
        self.head_fields += n
        if self.head_fields > self.gw.limits.max_header_bytes:
            self.too_large = True
            raise OverflowError("request head too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        ex = Exchange(parser.get_method(), self._url, self._headers,
                      parser.get_http_version(), parser.should_keep_alive())
        self.in_head = False
        self.served = True
        self.receiving = ex
        self.queue.append(ex)
        if self.state is HEAD:
            self.state = BUSY
        if len(self.queue) > 1:
            self.pause_reading("exchange")  # pipelined: hold further input until answered
        else:
            self._dispatch()

    def on_body(self, data: bytes) -> None:
        if self.meter is not None and self._over_budget(len(data), 0):
            return
        self.bytes_up += len(data)
        ex = self.receiving
        if ex is not None:
            ex.body(data)
            if ex.sink is None and len(ex.pending) > 16:
                self.pause_reading("exchange")  # body waiting for its upstream

    def on_message_complete(self) -> None:
        if self.receiving is not None:
            self.receiving.end()
            self.receiving = None

    def _upgrade(self, rest: bytes) -> None:
        """llhttp stops at CONNECT (and at Upgrade requests, whose Upgrade we strip)."""
        ex = self.queue[-1] if self.queue else None
        if ex is not None and ex.method == b"CONNECT":
            self.peek = rest
            return
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def _malformed(self, exc: Exception) -> None:
        if self.too_large:
            self.fail(431, "Request Header Fields Too Large",
                      f"request head larger than {self.gw.limits.max_header_bytes} bytes")
        else:
            cause = exc.__context__ or exc
            self.fail(400, "Bad Request", f"malformed request: {cause}")

    # -- dispatching ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start the exchange at the head of the queue, then the next ones it completes."""
        if self.dispatching:
            return  # re-entered from an exchange completed synchronously: the loop goes on
        self.dispatching = True
        try:
            while self.queue and not self.working and not self.closed:
                if self.cp.suspended is not None:   # fail closed before any decision
                    self.fail(503, "Service Unavailable",
                              f"cluster suspended: {self.cp.suspended}")
                    return
                ex = self.queue[0]
                self.working = True
                if ex.method == b"CONNECT":
                    self._spawn(self._connect(ex))
                else:
                    self._start_http(ex)
        except Exception:
            log.exception("gateway: connection %s failed", self.peer)
            self.close("error")
        finally:
            self.dispatching = False

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run what must wait (lookup, connect, audit record) as this connection's task."""
        self.runner = self.loop.create_task(self._guarded(work))

    async def _guarded(self, work: Coroutine[object, object, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway: connection %s failed", self.peer)
            self.close("error")

    def _finished(self, keep: bool) -> None:
        """The head exchange is answered: go on with the next one, or close."""
        if self.queue:
            self.queue.popleft()
        self.working = False
        if self.closed:
            return
        if not keep or not self.keep_alive or self.gw.draining:
            self.close("client")
            return
        if self.client_eof and not self.queue and not self.in_head:
            self.close("client")  # the client half-closed after its last request
            return
        self.state = BUSY if self.queue else IDLE
        self.resume_reading("exchange")
        self._dispatch()

    def fail(self, status: int, reason: str, detail: str) -> None:
        """Answer with an error and close (malformed input, timeouts, limits)."""
        if self.closed or self.refusing:
            return
        log.info("gateway: %s %d %s", self.peer, status, detail)
        self.state = CLOSED
        if self.transport is not None:
            self.transport.write(http1.error(status, reason, detail))
        self.close("error")

    def _event(self, decision: Decision, permitted: bool, kind: str, conn_id: str,
               address: str, method: bytes, path: str) -> DecisionEvent | None:
        """Count the decision; its audit event when there is an audit sink (none is
        built without one: this is on the keep-alive path)."""
        cp = self.cp
        cp.note(decision, permitted, kind, self.peer, self.identity or None)
        if not cp.recording:
            return None
        return cp.event(decision, permitted, kind, connection_id=conn_id,
                        client_address=self.peer, resolved_address=address,
                        method=method.decode("latin-1"), path=path, identity=self.identity)

    async def _challenge(self, ex: Exchange, refused: auth.Refused,
                         event: DecisionEvent | None) -> None:
        if event is not None:
            await self.cp.record(event)  # durable before the client sees the 407
        close = not ex.body_done or not ex.keep_alive or ex.method == b"CONNECT"
        self._write(auth.challenge(refused, self.gw.auth.schemes, close=close))
        self._finished(not close)

    # -- HTTP ------------------------------------------------------------------------------

    def _start_http(self, ex: Exchange) -> None:
        route = self.route
        if (route is None or route.url != ex.url or len(ex.hosts) != 1
                or route.host_header != ex.hosts[0] or ex.conflict):
            route = self._parse(ex)
            if route is None:
                return  # answered with 400
            self.route = route
        refused = self.caller.admit(ex.proxy_auth, "http", route.host.name, route.port,
                                    ex.method)  # who is calling (gateway/auth.py)
        self.identity = self.caller.identity
        if refused is not None:
            self._spawn(self._challenge(ex, *refused))
            return
        self.bytes_up = sum(len(p) for p in ex.pending)
        self.bytes_down = 0
        if route.addresses is None:
            self._spawn(self._resolve_then(ex, route))
        else:
            self._decide_http(ex, route, route.addresses, "")

    def _parse(self, ex: Exchange) -> Route | None:
        """Check the request line and Host (decide.http_target); None once answered 400."""
        checked = decide.http_target(ex.url, ex.hosts, ex.version, ex.conflict)
        if isinstance(checked, decide.Invalid):
            self.fail(400, "Bad Request", checked.reason)
            return None
        host = checked.host
        addresses = (host.ip,) if host.ip is not None else self.gw.resolver.known(host.name)
        route = Route(ex.url, ex.hosts[0] if ex.hosts else b"", host, checked.port,
                      checked.target, checked.path, addresses, checked.host_line)
        if self.route is not None:
            route.adopt(self.route)
        return route

    async def _resolve_then(self, ex: Exchange, route: Route) -> None:
        addresses, unresolved = await self._resolve(route.host.name, route.host.ip,
                                                    route.port, Kind.HTTP, "http")
        if not self.closed:
            self._decide_http(ex, route, addresses, unresolved)

    def _decide_http(self, ex: Exchange, route: Route, addresses: tuple[IPAddress, ...],
                     unresolved: str) -> None:
        gw = self.gw
        snapshot = gw.holder.current
        request = route.request
        if route.snapshot is snapshot and route.decided_for is addresses \
                and request is not None and route.decision is not None \
                and request.identity == self.identity:
            decision, permitted = route.decision, route.permitted
        else:
            request = Request(kind=_HTTP, host=route.host.name, port=route.port,
                              scheme="http", addresses=addresses, source=self.source,
                              identity=self.identity)
            decision, permitted = self.cp.decide(request)
            route.snapshot, route.decided_for = snapshot, addresses
            route.request, route.decision, route.permitted = request, decision, permitted
        address = route.address_text if addresses is route.addresses else \
            first_address_text(addresses)
        event = self._event(decision, permitted, "http", "", address, ex.method,
                            route.path_text)
        if not permitted:
            if event is None:
                self._refuse_http(ex, decision)
            else:
                self._spawn(self._record_then_refuse(ex, decision, event))
            return
        budgets = gw.budgets   # checked inline: the keep-alive path pays two loads
        budgeted = budgets.ledger or budgets.snapshot is not snapshot
        if event is not None and (unresolved or budgeted):
            self.cp.emit(event)   # not a plain short exchange: the decision record now
            event_out = True
        else:
            event_out = event is None
        if unresolved:
            self.fail(502, "Bad Gateway", unresolved)
            return
        if budgeted and not self._budget_admits(route.host.name, addresses, route.port,
                                                "http", ex):
            return
        up = self.upstream
        if up is None or not self._carries(up, route, addresses, snapshot):
            if up is not None:
                self.upstream = None
                gw.park(up)
            up = gw.pool.take(route.key, addresses, self)
            if up is None:
                if not event_out and event is not None:
                    self.cp.emit(event)
                self._spawn(self._open_then(ex, route, request, event, addresses))
                return
            self.upstream = up
            self.granted = (snapshot, self.identity)
        # A pooled upstream: the decision is written with the close, as one record.
        self._send(ex, route, up, request, event, deferred=not event_out)

    def _carries(self, up: Upstream, route: Route, addresses: tuple[IPAddress, ...],
                 snapshot: object) -> bool:
        """Whether the held upstream may carry this (permitted) request: one for the same
        name and port at a checked address (`Upstream.serves`, as the pool hands out), or
        one for another name whose peer is a checked address at the same port, got by
        this connection under the policy in force now for the identity calling now.

        The second kind is not shared: parked, it goes back under the name it was opened
        for. An origin that routes a connection by its first request's Host (connection-
        state routing) sends every later request on it to that first name's backend, so
        a request may ride on another name's connection only when its sender could have
        asked for that name itself, now."""
        return up.serves(route.key, addresses) or (
            up.reaches(route.port, addresses) and self.granted is not None
            and self.granted[0] is snapshot and self.granted[1] == self.identity)

    async def _record_then_refuse(self, ex: Exchange, decision: Decision,
                                  event: DecisionEvent) -> None:
        await self.cp.record(event)  # durable before the client sees the 403
        self._refuse_http(ex, decision)

    def _refuse_http(self, ex: Exchange, decision: Decision) -> None:
        close = not ex.body_done or not ex.keep_alive
        self._write(http1.refusal(decision, close=close))
        self._finished(not close)

    async def _open_then(self, ex: Exchange, route: Route, request: Request,
                         event: DecisionEvent | None,
                         addresses: tuple[IPAddress, ...]) -> None:
        up = await self._open(addresses, route.port, route.key)
        if up is None:
            return
        self.granted = (route.snapshot, request.identity)
        self._send(ex, route, up, request, event)

    def _send(self, ex: Exchange, route: Route, up: Upstream, request: Request,
              event: DecisionEvent | None, deferred: bool = False) -> None:
        """Forward the request head (and what body is here); the response comes back
        through `exchange_done` or `exchange_failed`. `deferred`: `event` (the decision)
        is not emitted yet and goes out with the close as one "exchange" record."""
        self.active = request
        self.open_event = event
        self.deferred = deferred
        self.counting = True
        self.started = time.monotonic()
        up.send(ex, b"".join((
            ex.method, b" ", route.target, b" HTTP/1.1\r\n", ex.forwarded_headers(),
            route.host_line, http1.VIA,
            b"Transfer-Encoding: chunked\r\n\r\n" if ex.chunked else _CRLF)))
        if not ex.body_done:
            self.resume_reading("exchange")

    # -- UpstreamOwner: what the upstream tells this connection -----------------------------

    def deliver(self, data: bytes, counted: int) -> None:
        if self.meter is not None and counted and self._over_budget(0, counted):
            return
        self.bytes_down += counted
        transport = self.transport
        if transport is not None and not self.closed and not self.refusing:
            transport.write(data)

    def exchange_done(self, ex: Exchange, up: Upstream, reuse: bool) -> None:
        """The upstream answered `ex` completely (its bytes are written to the client)."""
        if self.closed or not self.queue or self.queue[0] is not ex:
            return
        self._emit_close("")
        self.active = None
        if not ex.keep_alive:
            self.keep_alive = False  # the response said close (or is close-delimited)
        if not reuse or not ex.body_done:
            up.close()
            if self.upstream is up:
                self.upstream = None
        self._finished(ex.body_done)

    def exchange_failed(self, ex: Exchange, up: Upstream, exc: UpstreamError,
                        started: bool) -> None:
        if self.closed or self.refusing or not self.queue or self.queue[0] is not ex:
            return  # a revocation or the client's close ends the connection instead
        self._emit_close("upstream")
        self.active = None
        if self.upstream is up:
            self.upstream = None
        if self.transport is not None:
            if started:
                self.transport.abort()  # mid-body: the client must see a truncation
                self.close("upstream")
            else:
                self.fail(exc.status, exc.phrase, str(exc))

    async def _resolve(self, name: str, ip: IPAddress | None, port: int, kind: Kind,
                       scheme: str | None = None) -> tuple[tuple[IPAddress, ...], str]:
        """The addresses to decide with and connect to, or why there are none.

        A name the policy denies whatever it resolves to is never looked up: otherwise a
        workload could leak data in the DNS query itself (`CONNECT <secret>.evil.example`).
        The request is then decided on its name (no addresses) and refused.
        """
        if ip is not None:
            return (ip,), ""
        gw = self.gw
        if not decide.may_resolve_first(gw.resolver.known(name) is not None,
                                        gw.holder.current.decides_by_address):
            _, permitted = self.cp.decide(decide.name_request(kind, name, port, scheme,
                                                              self.source, self.identity))
            if not permitted:
                return (), ""
        try:
            return await self.gw.resolver.resolve(name, port), ""
        except ResolveError as exc:
            return (), str(exc)

    async def _open(self, addresses: tuple[IPAddress, ...], port: int,
                    key: tuple[str, int] | None = None) -> Upstream | None:
        """Connect to one of the checked addresses (never re-resolving the name)."""
        last = ""
        timed_out = False
        for ip in addresses:
            up = Upstream(self, self.loop, self.gw.limits.max_response_header_bytes, ip, key)
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(lambda up=up: up, str(ip), port),  # type: ignore[misc]
                    self.gw.limits.connect_timeout)
            except TimeoutError:
                timed_out = True
                last = f"connecting to {ip} port {port} timed out"
                continue
            except OSError as exc:
                last = f"cannot connect to {ip} port {port}: {exc.strerror or exc}"
                continue
            metrics.UPSTREAM_CONNECT_SECONDS.observe(time.perf_counter() - t0)
            if up.closed or (key is not None and up.early_eof):
                # accepted, then closed before this task ran again (an HTTP exchange can
                # get no answer from it; a tunnel still relays what it said: see _connect)
                last = f"{ip} port {port} closed the connection at once"
                continue
            if self.closed:
                up.close()
                return None
            self.upstream = up
            self.connected_ip = ip
            return up
        if timed_out:
            self.fail(504, "Gateway Timeout", last)
        else:
            self.fail(502, "Bad Gateway", last or "no address to connect to")
        return None

    def upstream_lost(self, up: Upstream) -> None:
        if self.upstream is not up or self.relay is not None:
            return  # one this connection let go of (parked, replaced, refused)
        if self.state is TUNNEL or self.state is PEEK:
            self.close("upstream")
        else:
            self.upstream = None

    # -- CONNECT ---------------------------------------------------------------------------

    async def _connect(self, ex: Exchange) -> None:
        idle, self.upstream = self.upstream, None
        if idle is not None:
            idle.close()  # the previous request's upstream: a tunnel never reuses it
        checked = decide.connect_target(ex.url)
        if isinstance(checked, decide.Invalid):
            self.fail(400, "Bad Request", checked.reason)
            return
        raw_host, port, host = checked.raw_host, checked.port, checked.host
        refused = self.caller.admit(ex.proxy_auth, "connect", raw_host, port, ex.method)
        self.identity = self.caller.identity
        if refused is not None:
            await self._challenge(ex, *refused)
            return
        addresses: tuple[IPAddress, ...] = ()
        unresolved = ""
        if host is not None:
            addresses, unresolved = await self._resolve(host.name, host.ip, port,
                                                        Kind.CONNECT)
        request = Request(kind=Kind.CONNECT, host=raw_host, port=port, addresses=addresses,
                          source=self.source, identity=self.identity)
        decision, permitted = self.cp.decide(request)
        event = self._event(decision, permitted, "connect", "",
                            first_address_text(addresses), b"CONNECT", "")
        if not permitted:
            if event is not None:
                await self.cp.record(event)  # durable before the client sees the 403
            self._write(http1.refusal(decision, close=True))
            self.close("client")
            return
        if event is not None:
            self.cp.emit(event)
        if unresolved or host is None:
            self.fail(502, "Bad Gateway", unresolved or "invalid host")
            return
        if not self._budget_admits(host.name, addresses, port, "connect", ex):
            return
        up = await self._open(addresses, port)
        if up is None:
            return
        self.active = request
        self.open_event = event
        self.connect_host = host.name
        self.connect_port = port
        self.connect_is_ip = host.ip is not None
        self.started = time.monotonic()
        self.bytes_up = self.bytes_down = 0
        self.counting = True
        self._write(_ESTABLISHED)
        metrics.OPEN_TUNNELS.inc()
        # The destination may speak first; only the client's direction waits for the peek.
        self.state = PEEK
        for data in up.start_tunnel():
            self.deliver(data, len(data))
        if up.early_eof:
            self.upstream_eof(up)
        self.queue.clear()
        early, self.peek = self.peek, b""
        self.resume_reading("exchange")
        if early:
            self._peek(early)

    def _peek(self, data: bytes) -> None:
        """Hold the client's first bytes until the TLS SNI (if any) has been checked."""
        if self.refusing:
            return
        self.peek += data
        result = tls.parse_client_hello(self.peek)
        check = decide.first_bytes(result, self.connect_port, self.connect_host,
                                   self.connect_is_ip, self.gw.limits.non_tls_443)
        if check is tls.NEED_MORE:
            return
        refusal: tuple[Decision, bool] | None = None
        if isinstance(check, decide.GuardRefusal):
            refusal = self.cp.guard_deny(check.rule, check.reason,
                                         f"{self.connect_host}:{self.connect_port}",
                                         self.connect_port)
        elif isinstance(check, decide.DecideSni):
            refusal = self._decide_sni(check.name)
        if refusal is not None:
            decision, permitted = refusal
            conn_id = self.open_event.connection_id if self.open_event else ""
            event = self._event(decision, permitted, "connect", conn_id,
                                str(self.connected_ip or ""), b"CONNECT", "")
            if not permitted:
                self._undefer()
                self.open_event = None  # the refusal replaces the close event
                self.counting = False
                self._refuse(event, "client")
                return
            if event is not None:
                self.cp.emit(event)  # a would-deny (report-only): relayed
        self.state = TUNNEL
        self.gw.tunnelled(self)
        data, self.peek = self.peek, b""
        if self.meter is not None and self._over_budget(len(data), 0):
            return
        self.bytes_up += len(data)
        self.upstream.write(data)  # type: ignore[union-attr]
        self._splice()

    # -- zero-copy relay (gateway.splice) --------------------------------------------------

    def _splice(self) -> None:
        """Hand the checked tunnel's sockets to a splice relay; where that is not possible
        (bytes still queued, a half-closed side, no splice) the protocol relay goes on.
        A tunnel under a byte budget keeps the protocol relay: each chunk is charged
        before it is relayed, which splice (bytes moved in the kernel) cannot do."""
        up = self.upstream
        if self.transport is None or up is None or up.transport is None \
                or self.client_eof or self.dest_eof or self.paused or self.meter is not None:
            return
        self.relay = SpliceRelay.start(self.loop, self, self.transport, up.transport)

    def spliced(self, upward: bool, n: int) -> None:
        if upward:
            self.bytes_up += n
        else:
            self.bytes_down += n

    def splice_eof(self, upward: bool) -> None:
        if upward:
            self.client_eof = True
            if self.dest_eof:
                self.close("client")
        else:
            self.dest_eof = True
            if self.client_eof:
                self.close("upstream")

    def splice_failed(self, exc: OSError) -> None:
        log.debug("gateway: %s tunnel ended: %s", self.peer, exc)
        self.close("client")

    def _unsplice(self, keep_client: bool = False) -> None:
        """Stop the splice relay; it closes both sockets (their transports let go), or
        the destination's only with `keep_client` (the client is cut later, by close)."""
        relay, self.relay = self.relay, None
        if relay is not None:
            self.held = relay.stop(keep_client)
        elif not keep_client and self.held is not None:
            os.close(self.held)
            self.held = None

    def _decide_sni(self, name: str) -> tuple[Decision, bool] | None:
        """An IP-literal CONNECT's SNI name, decided as the host at the address connected
        to; what is relayed from now on is that request (re-decided on policy swaps)."""
        assert self.connected_ip is not None
        request = Request(kind=Kind.CONNECT, host=name, port=self.connect_port,
                          addresses=(self.connected_ip,), source=self.source,
                          identity=self.identity)
        decision, permitted = self.cp.decide(request)
        if permitted:
            self.active = request
        return None if decision.allowed else (decision, permitted)

    def upstream_eof(self, up: Upstream) -> None:
        self.dest_eof = True
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.client_eof:
            self.close("upstream")

    # -- byte budgets (gateway/budgets.py) -------------------------------------------------

    def _budget_admits(self, host: str, addresses: tuple[IPAddress, ...], port: int,
                       kind: str, ex: Exchange) -> bool:
        """Meter what starts now; refuse it (429, recorded first) when a budget is used
        up. The body bytes already received count at once."""
        metered, refusal, over = self.gw.budgets.admit(host, addresses, port, self.identity,
                                                       kind, self.loop.time())
        if refusal is not None and over is not None:
            decision, permitted = refusal
            event = self._event(decision, permitted, kind, "", "", ex.method, "")
            if not permitted:
                close = kind == "connect" or not ex.body_done or not ex.keep_alive
                self._spawn(self._refuse_budget(event, too_many(decision, over, close=close),
                                                close))
                return False
            if event is not None:
                self.cp.emit(event)  # a would-refuse (report-only): go on
        self.meter = metered
        return metered is None or not self.bytes_up or not self._over_budget(self.bytes_up, 0)

    async def _refuse_budget(self, event: DecisionEvent | None, answer: bytes,
                             close: bool) -> None:
        if event is not None:
            await self.cp.record(event)  # durable before the client sees the 429
        self._write(answer)
        if close:
            self.close("client")
        else:
            self._finished(True)

    def _over_budget(self, up: int, down: int) -> bool:
        """Charge a chunk about to be relayed; True: it is not, the connection is cut
        (its close counted, the cut recorded before the client sees it)."""
        metered = self.meter
        assert metered is not None
        over = metered.charge(up, down, self.loop.time())
        if over is None:
            return False
        self._undefer()
        decision, permitted = self.gw.budgets.overrun(over, metered.host, metered.port)
        conn_id = self.open_event.connection_id if self.open_event else ""
        event = self._event(decision, permitted, metered.kind, conn_id,
                            str(self.connected_ip or ""), b"", "")
        if permitted:
            if event is not None:
                self.cp.emit(event)  # report-only: relayed, recorded once per window
            return False
        log.warning("gateway: cutting %s to %s: %s", self.peer, decision.destination,
                    decision.reason)
        self._emit_close("budget")
        self._refuse(event, "budget")
        return True

    # -- policy changes and shutdown -------------------------------------------------------

    def recheck(self) -> bool:
        """Re-decide what is being relayed; close it if no longer permitted."""
        request = self.active
        if request is None or self.closed:
            return False
        # A revoked or expired identity, or another one, then the policy.
        request, refusal = self.caller.recheck(request)
        self.active = request
        decision, permitted = refusal or self.cp.decide(request)
        if permitted:
            if not decision.allowed and self.would_revoke is not request:
                # Report-only: the policy in force would cut this; record it once, relay on.
                self.would_revoke = request
                self._undefer()
                conn_id = self.open_event.connection_id if self.open_event else ""
                event = self._event(decision, True, request.kind.value, conn_id,
                                    str(self.connected_ip or ""), b"", "")
                if event is not None:
                    self.cp.emit(event)
            return False
        log.warning("gateway: revoking %s to %s: %s", self.peer, decision.destination,
                    decision.reason)
        metrics.REVOKED.inc()
        self._refuse(self._close_event("revoked"), "revoked")
        return True

    def _refuse(self, event: DecisionEvent | None, cause: CloseCause) -> None:
        """Stop relaying at once; cut the client only once `event` is durable.

        The destination is aborted now (nothing more reaches it) and the client is no
        longer read; what the client sees (the cut) waits for the audit record.
        """
        self.refusing = True
        self.active = None
        self._unsplice(keep_client=True)  # nothing more is relayed, either way
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abort()  # let go of first: its loss must not close the client early
        if self.transport is not None:
            self.transport.pause_reading()
        self.refusal_task = self.loop.create_task(self._cut_after_record(event, cause))

    async def _cut_after_record(self, event: DecisionEvent | None, cause: CloseCause) -> None:
        if event is not None:
            await self.cp.record(event)
        self.close(cause, cause_event=False, final=True)

    def _close_event(self, cause: CloseCause) -> DecisionEvent | None:
        """End the permitted exchange or tunnel: count its bytes; its close event."""
        self.meter = None   # the next exchange is admitted (and metered) on its own
        if not self.counting:
            return None
        self.counting = False
        self.gw.count_bytes(self.bytes_up, self.bytes_down)
        event, self.open_event = self.open_event, None
        if event is None:
            return None
        if self.deferred:   # never emitted, so ours to finish: one "exchange" record
            self.deferred = False
            return self.cp.exchange_event(event, cause, self.bytes_up, self.bytes_down,
                                          time.monotonic() - self.started)
        return self.cp.close_event(event, cause, self.bytes_up, self.bytes_down,
                                   time.monotonic() - self.started)

    def _undefer(self) -> None:
        """Emit the open exchange's deferred decision record now (something else is
        about to refer to it, or the exchange is no longer short)."""
        if self.deferred:
            self.deferred = False
            if self.open_event is not None:
                self.cp.emit(self.open_event)

    def _emit_close(self, cause: CloseCause) -> None:
        event = self._close_event(cause)
        if event is not None:
            self.cp.emit(event)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self, cause: CloseCause, *, cause_event: bool = True, final: bool = False) -> None:
        if self.closed or (self.refusing and not final and cause != "shutdown"):
            return
        was_tunnel = self.state is TUNNEL or self.state is PEEK
        self._unsplice()  # closes a spliced tunnel's sockets; the transports did let go
        self.closed = True
        self.state = CLOSED
        if was_tunnel or self.active is not None:
            if cause_event:
                self._emit_close(cause)
            else:
                self._undefer()
                self.open_event = None
                self.counting = False
        if was_tunnel:
            metrics.OPEN_TUNNELS.dec()
        self.active = None
        up, self.upstream = self.upstream, None
        if up is not None:
            if cause in _ABORT:
                up.abort()
            elif up.reusable and not was_tunnel:
                self.gw.park(up)  # another client may reuse it
            else:
                up.close()
        if self.transport is not None:
            if cause in _ABORT:
                self.transport.abort()
            else:
                self.transport.close()
        self.gw.forget(self)

    def sweep(self, now: float) -> None:
        """Called by the gateway a few times a second: header and idle deadlines."""
        if self.closed or self.refusing:
            return
        if self.state is TUNNEL:  # only the idle deadline applies: the cheap path
            activity = self.bytes_up + self.bytes_down
            if activity != self.activity_seen:
                self.activity_seen = activity
                self.idle_since = now
            elif now - self.idle_since > self.gw.limits.idle_timeout:
                log.info("gateway: %s idle for %g s, closing", self.peer,
                         self.gw.limits.idle_timeout)
                self.close("timeout")
            return
        if self.deferred and time.monotonic() - self.started > SHORT_EXCHANGE_S:
            self._undefer()   # not a short exchange: its decision record now
        activity = self.bytes_up + self.bytes_down + len(self.queue)
        if activity != self.activity_seen:
            self.activity_seen = activity
            self.idle_since = now
        up = self.upstream
        awaiting = up.response_owed_since(now) if up is not None else 0.0
        breach = deadline_breach(self.gw.limits, now, accepted=self.accepted,
                                 served=self.served, in_head=self.in_head,
                                 head_started=self.head_started, awaiting_response=awaiting,
                                 idle_since=self.idle_since)
        if breach is None:
            return
        status, why = breach
        if status == 408:
            self.fail(408, "Request Timeout", why)
        elif status == 504 and up is not None:
            up.timed_out(why)
        else:
            log.info("gateway: %s %s, closing", self.peer, why)
            self.close("timeout")
