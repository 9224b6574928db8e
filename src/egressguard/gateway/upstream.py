"""The gateway's side of an HTTP exchange: the request body on its way to the destination,
and the destination connection (`Upstream`), which parses responses or relays a tunnel.

Response bytes for the client are collected during one read and handed over with a
single call (one `write`), so a small response costs one syscall each way. The end of an
exchange is told to the owner by a direct call once those bytes are written (no future,
no task switch), so a keep-alive request is handled entirely in transport callbacks.

An `Upstream` talks to whoever holds it (the client connection, or the pool while it is
parked) only through `UpstreamOwner`, and is driven only through its own methods. Its
one state, `UpState`, is changed only here (h11's rule). Transitions:

    NEW     -> BUSY (send) | TUNNEL (start_tunnel) | CLOSED
    BUSY    -> IDLE (a reusable response is complete) | CLOSED (failed, not reusable,
               lost, or the owner closes it)
    IDLE    -> BUSY (send: the next request) | PARKED (park) | CLOSED
    PARKED  -> IDLE (adopt: taken from the pool) | CLOSED (expired, lost, unsolicited
               bytes)
    TUNNEL  -> CLOSED
    CLOSED     final; `connection_lost` tells the owner (`upstream_lost`) in every case

Bytes from a NEW connection are kept for the tunnel (a destination may speak first, and
even half-close: `early_eof`);
bytes on an IDLE or PARKED one were never asked for and close it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from http import HTTPStatus
from typing import Protocol, cast

import httptools

from egressguard.engine.normalize import IPAddress
from egressguard.errors import Unavailable
from egressguard.gateway import http1

log = logging.getLogger("egressguard.gateway")
_CRLF = b"\r\n"


class Exchange:
    """One request: its head, and its body on the way to the upstream.

    The headers are scanned once here for everything the proxy checks (framing, Host,
    hop-by-hop), so the checks that follow do not walk them again.
    """

    __slots__ = ("auth_name", "body_done", "chunked", "conflict", "has_body", "headers", "hop",
                 "hosts", "keep_alive", "method", "pending", "proxy_auth", "sink", "url",
                 "version")

    def __init__(self, method: bytes, url: bytes, headers: http1.Headers, version: str,
                 keep_alive: bool) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.chunked = False
        self.has_body = False
        self.hosts: list[bytes] = []
        self.hop = False       # some header is hop-by-hop (or named in Connection)
        self.proxy_auth: bytes | None = None  # Proxy-Authorization (never forwarded)
        self.auth_name = b""   # its name as sent (to find it again without a walk)
        has_cl = has_te = False
        hop_by_hop = http1.HOP_BY_HOP
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                self.hosts.append(value)
            elif lower == b"transfer-encoding":
                has_te = self.hop = True
                self.chunked = self.has_body = b"chunked" in value.lower()
            elif lower == b"content-length":
                has_cl = True
                self.has_body = value.strip() not in (b"0", b"")
            elif lower == b"proxy-authorization":
                # Two credentials are one too many: refused as an unsupported scheme.
                if self.proxy_auth is None:
                    self.proxy_auth, self.auth_name = value, name
                else:
                    self.proxy_auth, self.hop = b"duplicate", True
            elif lower in hop_by_hop or lower == b"connection":
                self.hop = True
        self.conflict = has_cl and has_te
        self.body_done = not self.has_body
        self.pending: list[bytes] = []
        self.sink: asyncio.Transport | None = None

    def forwarded_headers(self) -> bytes:
        """The end-to-end headers, rendered (all of them when none is hop-by-hop)."""
        if self.hop:
            headers = list(http1.end_to_end(self.headers))
        elif self.proxy_auth is not None:  # an authenticated request: drop one header
            at = self.headers.index((self.auth_name, self.proxy_auth))
            headers = self.headers[:at] + self.headers[at + 1:]
        else:
            headers = self.headers
        return b"".join([b"%s: %s\r\n" % pair for pair in headers])

    def body(self, data: bytes) -> None:
        if self.sink is None:
            self.pending.append(data)
        elif self.chunked:
            self.sink.writelines((b"%x\r\n" % len(data), data, _CRLF))
        else:
            self.sink.write(data)

    def end(self) -> None:
        self.body_done = True
        if self.sink is not None and self.chunked:
            self.sink.write(b"0\r\n\r\n")

    def attach(self, transport: asyncio.Transport) -> None:
        self.sink = transport
        pending, self.pending = self.pending, []
        for data in pending:
            self.body(data)
        if self.body_done and self.chunked and self.has_body:
            transport.write(b"0\r\n\r\n")


class UpstreamError(Unavailable):
    """Why an exchange failed, and the status the client gets for it (502 or 504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.phrase = HTTPStatus(status).phrase


class _Unsolicited(Exception):
    """Response bytes the gateway did not ask for (after the response it awaited)."""


class UpState(enum.Enum):
    NEW = "new"          # connected, nothing sent yet
    BUSY = "busy"        # a request is out, its response is being relayed
    IDLE = "idle"        # between responses, held by its client
    PARKED = "parked"    # between responses, in the shared pool
    TUNNEL = "tunnel"    # relaying a CONNECT tunnel
    CLOSED = "closed"


_NEW, _BUSY, _TUNNEL, _CLOSED = UpState.NEW, UpState.BUSY, UpState.TUNNEL, UpState.CLOSED


class UpstreamOwner(Protocol):
    """What an `Upstream` tells its holder (`ClientConnection`, or `Pool` while parked)."""

    def deliver(self, data: bytes, counted: int) -> None:
        """Bytes for the client; `counted` of them are payload (body or tunnel bytes)."""

    def exchange_done(self, ex: Exchange, up: Upstream, reuse: bool) -> None:
        """`ex` is answered completely; `reuse`: the connection may carry another."""

    def exchange_failed(self, ex: Exchange, up: Upstream, error: UpstreamError,
                        started: bool) -> None:
        """`ex` failed (`started`: after part of the response reached the client)."""

    def upstream_eof(self, up: Upstream) -> None:
        """A tunnel's destination stopped sending."""

    def upstream_lost(self, up: Upstream) -> None:
        """The connection is gone (whoever closed it)."""

    def pause_reading(self, reason: str) -> None:
        """The destination's write buffer is full: stop reading the client."""

    def resume_reading(self, reason: str) -> None: ...


class Upstream(asyncio.Protocol):
    """The connection to the destination. HTTP states parse responses; TUNNEL relays."""

    def __init__(self, owner: UpstreamOwner, loop: asyncio.AbstractEventLoop,
                 max_head: int, ip: IPAddress, key: tuple[str, int] | None = None) -> None:
        self.owner = owner
        self.loop = loop
        self.max_head = max_head   # Limits.max_response_header_bytes
        self.ip = ip
        self.key = key             # (host, port) it may be reused for; None: a tunnel
        self.state = UpState.NEW
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self.early_eof = False     # the destination spoke first and finished before relaying
        self.parser: httptools.HttpResponseParser | None = None
        self.exchange: Exchange | None = None
        self.awaiting = 0.0    # loop time since when a response head is owed (0: none)
        self._head_bytes = 0   # head bytes received so far for the awaited response
        self._reason = b""
        self._headers: http1.Headers = []
        self._started = False
        self._client_chunked = False
        self._until_close = False
        self.out: list[bytes] = []  # response bytes, written once per read (fewer syscalls)
        self._counted = 0           # body bytes among them
        # The exchange's end, told to the client once `out` is written: (exchange, reuse)
        # or (exchange, error).
        self._outcome: tuple[Exchange, bool | UpstreamError] | None = None

    # -- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is _TUNNEL:
            self.owner.deliver(data, len(data))
            return
        if state is _NEW:
            self._early.append(data)
            return
        if state is _CLOSED:
            return
        if self.parser is None or self.exchange is None:
            if state is not _BUSY:
                self.close()  # unsolicited bytes on an idle connection: drop it
            return  # bytes after a HEAD response head: nothing may follow
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Unsolicited):
                self._unsolicited()
            else:
                self._fail(UpstreamError(502, f"malformed response from upstream: {exc}"))
        else:
            if self.awaiting and self.exchange is not None:
                # Still no complete head: httptools buffers an unfinished header line
                # without a callback, so the bytes of each such read are counted here.
                self._head_bytes += len(data)
                if self._head_bytes > self.max_head:
                    self._fail(UpstreamError(
                        502, f"upstream response head larger than {self.max_head} bytes"))
        self.flush()
        if self._outcome is not None:
            self._deliver()

    def eof_received(self) -> bool:
        if self.state is UpState.TUNNEL:
            self.owner.upstream_eof(self)
            return True
        if self.state is UpState.NEW:
            # A destination may greet and half-close before the tunnel starts (a banner):
            # keep the transport open for writing; `start_tunnel`'s caller passes the EOF on.
            self.early_eof = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = UpState.CLOSED
        if self.exchange is not None:
            if self._started and self._until_close:
                if self._client_chunked:
                    self.out.append(b"0\r\n\r\n")
                self.flush()
                self._finish(reuse=False)
            else:
                reason = "upstream closed the connection" + (f": {exc}" if exc else "")
                self._fail(UpstreamError(502, reason))
        if self._outcome is not None:
            self._deliver()
        self.owner.upstream_lost(self)

    def pause_writing(self) -> None:
        self.owner.pause_reading("upstream-buffer")

    def resume_writing(self) -> None:
        self.owner.resume_reading("upstream-buffer")

    # -- what the owner calls --------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is UpState.CLOSED

    @property
    def reusable(self) -> bool:
        """Between responses and held by a client (may be parked or sent on)."""
        return self.state is UpState.IDLE

    def serves(self, key: tuple[str, int], addresses: tuple[IPAddress, ...]) -> bool:
        """May carry a request to `key` decided for `addresses`."""
        return (self.state is UpState.IDLE or self.state is UpState.PARKED) \
            and self.key == key and self.ip in addresses

    def reaches(self, port: int, addresses: tuple[IPAddress, ...]) -> bool:
        """Held between responses, and its peer is one of the checked `addresses` at
        `port` (whatever name it was opened for)."""
        key = self.key
        return self.state is UpState.IDLE and key is not None and key[1] == port \
            and self.ip in addresses

    def send(self, exchange: Exchange, head: bytes) -> None:
        """Forward a request head (and the body as it comes); await its response."""
        transport = self.transport
        assert transport is not None
        self.state = UpState.BUSY
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.exchange = exchange
        self.awaiting = self.loop.time()
        self._head_bytes = 0
        self._begin()
        transport.write(head)
        exchange.attach(transport)

    def start_tunnel(self) -> list[bytes]:
        """Relay from now on; returns what the destination sent before (it may speak first)."""
        if self.state is UpState.NEW:
            self.state = UpState.TUNNEL
        early, self._early = self._early, []
        return early

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def write_eof(self) -> None:
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state is not UpState.CLOSED:
            self.transport.resume_reading()

    def park(self, pool: UpstreamOwner) -> None:
        """IDLE -> PARKED: the pool holds it now."""
        self.state = UpState.PARKED
        self.owner = pool

    def adopt(self, owner: UpstreamOwner) -> None:
        """PARKED -> IDLE: taken from the pool by `owner`."""
        self.state = UpState.IDLE
        self.owner = owner

    def response_owed_since(self, now: float) -> float:
        """Loop time since when a response head is owed (0: none). While the request body
        is still being sent the clock restarts: an upstream may await the whole body."""
        ex = self.exchange
        if self.awaiting and ex is not None and not ex.body_done:
            self.awaiting = now
        return self.awaiting

    def close(self) -> None:
        self.state = UpState.CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.state = UpState.CLOSED
        if self.transport is not None:
            self.transport.abort()

    # -- HTTP responses --------------------------------------------------------------------

    def timed_out(self, why: str) -> None:
        """The response head did not come in time (`Limits.response_timeout`): 504."""
        self._fail(UpstreamError(504, why))
        self._deliver()

    def _unsolicited(self) -> None:
        """Bytes after the awaited response (a hostile upstream answering a request not
        yet made): never relayed, and the connection is never reused."""
        failed = self._outcome is not None and isinstance(self._outcome[1], UpstreamError)
        if not failed:  # after a failure the rest of the read is dropped anyway
            log.warning("gateway: upstream %s port %s sent bytes after its response; "
                        "closing it", self.ip, self.key[1] if self.key else "?")
        self.parser = None
        self.exchange = None
        self.awaiting = 0.0
        if self._outcome is not None and self._outcome[1] is True:
            self._outcome = (self._outcome[0], False)
        self.close()

    def on_message_begin(self) -> None:
        if self.exchange is None:
            raise _Unsolicited

    def _begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._started = False

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        parser = self.parser
        if ex is None or parser is None:
            return
        status = parser.get_status_code()
        headers = self._headers
        has_cl = chunked = hop = False
        size = len(self._reason)
        for name, value in headers:
            size += len(name) + len(value)
            lower = name.lower()
            if lower == b"content-length":
                has_cl = True
            elif lower == b"transfer-encoding":
                hop = True
                chunked = chunked or b"chunked" in value.lower()
            elif lower in http1.HOP_BY_HOP or lower == b"connection":
                hop = True
        limit = self.max_head
        if max(size, self._head_bytes) > limit:
            self._fail(UpstreamError(502, f"upstream response head larger than {limit} bytes"))
            return
        if hop:
            headers = list(http1.end_to_end(headers))
        head = [b"HTTP/1.1 %d " % status, self._reason, _CRLF,
                b"".join([b"%s: %s\r\n" % pair for pair in headers]), http1.VIA]
        if 100 <= status < 200:
            if status == 101:
                self._fail(UpstreamError(502, "upstream switched protocols unasked"))
                return
            head.append(_CRLF)
            self.out += head
            self._begin()
            return
        self.awaiting = 0.0
        bodiless = ex.method == b"HEAD" or status in (204, 304)
        keep = ex.keep_alive
        self._client_chunked = False
        self._until_close = not bodiless and not has_cl and not chunked
        if not bodiless and not has_cl:
            if ex.version == "1.1":
                self._client_chunked = True
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False  # close-delimited body for an HTTP/1.0 client
        if not keep:
            ex.keep_alive = False  # the client connection closes after this exchange
        head.append(b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
        self.out += head
        self._started = True
        if ex.method == b"HEAD":
            # llhttp cannot be told a response has no body; start a fresh parser next time.
            self.parser = None
            self._finish(reuse=True)

    def on_body(self, data: bytes) -> None:
        if self.exchange is None:
            raise _Unsolicited  # e.g. a "body" after a HEAD response, or after a failure
        self._counted += len(data)
        if self._client_chunked:
            self.out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if not self._started or self.exchange is None:
            return  # an interim (1xx) response
        if self._client_chunked:
            self.out.append(b"0\r\n\r\n")
        parser = self.parser
        self._finish(reuse=parser is not None and parser.should_keep_alive())

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            counted, self._counted = self._counted, 0
            self.owner.deliver(out[0] if len(out) == 1 else b"".join(out), counted)

    def _finish(self, reuse: bool) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            self._outcome = (ex, reuse and not self._until_close)

    def _fail(self, error: UpstreamError) -> None:
        ex, self.exchange = self.exchange, None
        self.parser = None
        self.awaiting = 0.0
        if ex is not None:
            self._outcome = (ex, error)
        self.close()

    def _deliver(self) -> None:
        """Tell the client how the exchange ended (after its bytes were written)."""
        outcome, self._outcome = self._outcome, None
        if outcome is not None:
            ex, result = outcome
            if isinstance(result, UpstreamError):
                self.owner.exchange_failed(ex, self, result, self._started)
            else:
                if result and self.state is UpState.BUSY:
                    self.state = UpState.IDLE
                self.owner.exchange_done(ex, self, result)
