"""Asking the upstream resolver: UDP first, TCP when the answer is truncated.

`UdpPool` keeps a few connected UDP sockets to the upstream and matches answers to queries
by socket and id (random, never two in flight on one socket), with one coarse timeout sweep
instead of a timer per query. Connected sockets make the kernel drop datagrams from any
other address; each socket is replaced by a fresh one (new random source port) after
`rotate` queries, so an off-path attacker cannot learn a port and spend a long time
guessing ids against it.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable, Iterator

from egressguard.errors import Unavailable

log = logging.getLogger("egressguard.dns")
Waiter = Callable[[bytes | Exception], None]  # gets the answer or the UpstreamError



class UpstreamError(Unavailable):
    """The upstream did not answer usefully (timeout, refused connection, bad framing)."""


def _tc(packet: bytes) -> bool:
    return len(packet) >= 4 and bool(packet[2] & 0x02)


async def _udp(packet: bytes, qid: int, server: tuple[str, int], deadline: float) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.connect(server)
        await loop.sock_sendall(sock, packet)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamError(f"upstream {server[0]}:{server[1]} timed out")
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535), remaining)
            except TimeoutError:
                raise UpstreamError(f"upstream {server[0]}:{server[1]} timed out") from None
            # Only an answer to our id counts; anything else is ignored until the deadline.
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and data[2] & 0x80:
                return data
    except OSError as exc:
        raise UpstreamError(f"upstream {server[0]}:{server[1]}: {exc}") from None
    finally:
        sock.close()


async def _tcp(packet: bytes, qid: int, server: tuple[str, int], deadline: float) -> bytes:
    loop = asyncio.get_running_loop()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            while True:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(size)
                if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                    return data
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(exchange(), max(0.0, deadline - loop.time()))
    except TimeoutError:
        raise UpstreamError(f"upstream {server[0]}:{server[1]} (tcp) timed out") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamError(f"upstream {server[0]}:{server[1]} (tcp): {exc}") from None


async def resolve(packet: bytes, qid: int, server: tuple[str, int], timeout: float,
                  tcp: bool = False) -> bytes:
    """Send `packet` (whose id is `qid`) to `server` and return the raw answer, retrying
    over TCP when the UDP answer has TC set. `timeout` bounds the whole exchange."""
    deadline = asyncio.get_running_loop().time() + timeout
    if not tcp:
        answer = await _udp(packet, qid, server, deadline)
        if not _tc(answer):
            return answer
    return await _tcp(packet, qid, server, deadline)


def _deliver(waiter: Waiter, result: bytes | Exception) -> None:
    try:
        waiter(result)
    except Exception:  # a waiter's bug must not take the socket down
        log.exception("error handling an upstream answer")


class _Socket(asyncio.DatagramProtocol):
    """One connected socket of the pool, the loop it lives on and the queries waiting on
    it. (The loop is kept: `asyncio.get_running_loop()` is a getpid system call.)"""

    def __init__(self, pool: UdpPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[Waiter, float]] = {}
        self.sent = 0
        self.retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Only a response (QR set) to an id in flight on this socket counts.
        if len(data) < 12 or not data[2] & 0x80:
            return
        waiting = self.pending.pop(data[0] << 8 | data[1], None)
        if waiting is not None:
            _deliver(waiting[0], data)
        if self.retired and not self.pending:
            self.close()

    def error_received(self, exc: Exception) -> None:
        # An ICMP error on a connected socket (port unreachable): fail what waits here.
        self.fail(UpstreamError(f"upstream {self.pool.label}: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(UpstreamError(f"upstream {self.pool.label}: socket closed"))

    def fail(self, error: UpstreamError) -> None:
        pending, self.pending = self.pending, {}
        for waiter, _deadline in pending.values():
            _deliver(waiter, error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpPool:
    """Connected UDP sockets to one upstream, shared by every query of a filter.

    `query(packet)` sends `packet` with an id of the pool's choosing and returns the raw
    answer (its id is the pool's; the caller restores the client's)."""

    def __init__(self, server: tuple[str, int], size: int = 4, rotate: int = 20000,
                 sweep: float = 0.1) -> None:
        self.server = server
        self.label = f"{server[0]}:{server[1]}"
        self.size = size
        self.rotate = rotate
        self.sweep_interval = sweep
        self._sockets: list[_Socket | None] = [None] * size
        self._next = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._opening: dict[int, asyncio.Future[_Socket]] = {}
        self._draining: set[_Socket] = set()  # replaced sockets still awaiting answers
        self._ids: Iterator[int] = iter(())

    def _random_id(self) -> int:
        """A query id from the OS's CSPRNG, read 512 at a time: one system call per 512
        queries instead of one per query, the ids just as unpredictable."""
        qid = next(self._ids, None)
        if qid is None:
            self._ids = iter(array.array("H", os.urandom(1024)))
            qid = next(self._ids)
        return qid

    async def _socket(self, slot: int) -> _Socket:
        sock = self._sockets[slot]
        if sock is not None and not sock.retired and sock.transport is not None \
                and not sock.transport.is_closing():
            return sock
        opening = self._opening.get(slot)
        if opening is not None:
            return await asyncio.shield(opening)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Socket] = loop.create_future()
        self._opening[slot] = future
        try:
            family = socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET
            _, proto = await loop.create_datagram_endpoint(
                lambda: _Socket(self, loop), remote_addr=self.server, family=family)
        except OSError as exc:
            error = UpstreamError(f"upstream {self.label}: {exc}")
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning
            raise error from None
        finally:
            self._opening.pop(slot, None)
        if sock is not None:
            if sock.pending:
                self._draining.add(sock)
            else:
                sock.close()
        self._sockets[slot] = proto
        future.set_result(proto)
        return proto

    def send_nowait(self, packet: bytes, timeout: float, waiter: Waiter) -> bool:
        """Send `packet` on an open socket and call `waiter` once with the answer or an
        `UpstreamError`; False (nothing sent) when no socket is open yet in the next slot."""
        slot = self._next
        sock = self._sockets[slot]
        if sock is None or sock.retired or sock.transport is None \
                or sock.transport.is_closing():
            return False
        self._next = (slot + 1) % self.size
        self._send(sock, packet, timeout, waiter)
        return True

    def _send(self, sock: _Socket, packet: bytes, timeout: float, waiter: Waiter) -> None:
        loop = sock.loop
        for _ in range(8):
            qid = self._random_id()
            if qid not in sock.pending:
                break
        else:
            raise UpstreamError(f"upstream {self.label}: no free query id")
        sock.pending[qid] = (waiter, loop.time() + timeout)
        sock.sent += 1
        if sock.sent >= self.rotate:
            sock.retired = True  # the next query opens a fresh socket in this slot
        assert sock.transport is not None
        sock.transport.sendto(qid.to_bytes(2, "big") + packet[2:])
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep())

    async def query(self, packet: bytes, timeout: float) -> bytes:
        """The upstream's raw answer to `packet`; `UpstreamError` on timeout or error."""
        slot = self._next
        self._next = (slot + 1) % self.size
        sock = await self._socket(slot)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def waiter(result: bytes | Exception) -> None:
            if future.done():
                return
            if isinstance(result, bytes):
                future.set_result(result)
            else:
                future.set_exception(result)

        self._send(sock, packet, timeout, waiter)
        try:
            return await future
        finally:
            if sock.retired and not sock.pending:
                sock.close()

    async def _sweep(self) -> None:
        """Fail queries past their deadline; runs only while some are in flight."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = loop.time()
            busy = False
            for sock in [*self._sockets, *self._draining]:
                if sock is None:
                    continue
                for qid, (waiter, deadline) in list(sock.pending.items()):
                    if deadline <= now:
                        sock.pending.pop(qid, None)
                        _deliver(waiter, UpstreamError(f"upstream {self.label} timed out"))
                    else:
                        busy = True
                if sock in self._draining and not sock.pending:
                    self._draining.discard(sock)
                    sock.close()
            if not busy:
                return

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sock in [*self._sockets, *self._draining]:
            if sock is not None:
                sock.close()
        self._sockets = [None] * self.size
        self._draining.clear()

    async def resolve(self, packet: bytes, timeout: float, tcp: bool = False) -> bytes:
        """UDP through the pool, then TCP when the answer is truncated (or `tcp`)."""
        deadline = asyncio.get_running_loop().time() + timeout
        if not tcp:
            answer = await self.query(packet, timeout)
            if not _tc(answer):
                return answer
        qid = secrets.randbits(16)
        return await _tcp(qid.to_bytes(2, "big") + packet[2:], qid, self.server, deadline)
