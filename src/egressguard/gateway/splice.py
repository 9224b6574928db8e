"""Zero-copy tunnel relay: once a CONNECT tunnel's first client bytes have been checked,
its bytes move between the two sockets with `os.splice` through a pipe per direction, in
the kernel, never copied into Python objects.

Why: relaying at the protocol level costs two copies and a `bytes` object per read and a
Python callback per chunk each way (a fifth of direct throughput measured with a C client).
With splice, Python runs one callback per readiness event (up to a pipe's worth, 1 MiB) and
no data passes through user space.

How: the sockets are taken over from their transports (duplicated, then the transports
aborted, which closes only their descriptors), so a spliced tunnel holds two descriptors,
like any tunnel, and uses the event loop's `add_reader`/`add_writer` (level-triggered) on
them. Pipes come from a small shared pool and are held only while bytes wait in them: a
direction whose pipe drained gives it back, so idle tunnels hold no pipe (no descriptors,
no kernel buffers). Where splice is unavailable (not Linux, a transport without a socket,
a loop without `add_reader`, bytes still buffered in a transport) `start` returns None and
the protocol-level relay carries on: the same bytes, only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from typing import Protocol

PIPE_SIZE = 1 << 20          # bytes a pipe may hold (F_SETPIPE_SZ; capped by the kernel)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
AVAILABLE = hasattr(os, "splice")


class SpliceOwner(Protocol):
    """The connection a relay serves (`ClientConnection`)."""

    def spliced(self, upward: bool, n: int) -> None:
        """`n` more bytes went client -> destination (`upward`) or back."""

    def splice_eof(self, upward: bool) -> None:
        """One side stopped sending (`upward`: the client); everything before was relayed."""

    def splice_failed(self, exc: OSError) -> None:
        """A socket failed (reset, broken pipe): end the tunnel."""


class _Pipes:
    """Free pipes shared by every relay of the process; a pipe is returned only empty.
    With no relay left the free pipes are closed (an idle gateway holds none)."""

    def __init__(self, keep: int = 64) -> None:
        self.free: list[tuple[int, int, int]] = []
        self.keep = keep
        self.users = 0

    def leave(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            while self.free:
                r, w, _ = self.free.pop()
                os.close(r)
                os.close(w)

    def get(self) -> tuple[int, int, int]:
        """(read end, write end, capacity in bytes)."""
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller pipe only means more callbacks
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        try:
            capacity = fcntl.fcntl(w, _F_GETPIPE_SZ)
        except OSError:
            capacity = 65536
        return r, w, capacity

    def put(self, pipe: tuple[int, int, int], empty: bool = True) -> None:
        if empty and len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])


_PIPES = _Pipes()


class _Direction:
    """One way: `src` socket -> pipe -> `dst` socket."""

    __slots__ = ("dst", "eof", "pending", "pipe", "reading", "src", "upward", "writing")

    def __init__(self, src: int, dst: int, upward: bool) -> None:
        self.src, self.dst, self.upward = src, dst, upward
        self.pipe: tuple[int, int, int] | None = None  # held only while bytes wait in it
        self.pending = 0          # bytes in the pipe, not yet written to dst
        self.eof = False
        self.reading = False
        self.writing = False


class SpliceRelay:
    """Relays both directions of one tunnel until `stop()` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: SpliceOwner,
                 client: int, upstream: int) -> None:
        self.loop = loop
        self.owner = owner
        self._fds = (client, upstream)
        self._dirs = (_Direction(client, upstream, True), _Direction(upstream, client, False))
        self.stopped = False
        _PIPES.users += 1

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop, owner: SpliceOwner,
              client: asyncio.Transport, upstream: asyncio.Transport) -> SpliceRelay | None:
        """Take both sockets over from their transports (which are aborted: from now on
        their protocols must ignore `connection_lost`), or None: keep the protocol relay."""
        if not AVAILABLE:
            return None
        if client.get_write_buffer_size() or upstream.get_write_buffer_size():
            return None  # bytes still queued in a transport would be overtaken
        socks = (client.get_extra_info("socket"), upstream.get_extra_info("socket"))
        fds: list[int] = []
        relay: SpliceRelay | None = None
        try:
            for sock in socks:
                if sock is None or sock.type != socket.SOCK_STREAM:
                    raise OSError(errno.ENOTSOCK, "not a stream socket")
                fds.append(os.dup(sock.fileno()))
            for fd in fds:
                os.set_inheritable(fd, False)
            relay = cls(loop, owner, fds[0], fds[1])
            for d in relay._dirs:
                relay._read_on(d)
        except (OSError, NotImplementedError, RuntimeError, AttributeError):
            if relay is not None:
                _PIPES.leave()
            for fd in fds:
                with contextlib.suppress(OSError):
                    loop.remove_reader(fd)
                os.close(fd)
            return None
        # Only the transports' descriptors close; the sockets live on in ours.
        client.abort()
        upstream.abort()
        return relay

    # -- event loop registration --------------------------------------------------------

    def _read_on(self, d: _Direction) -> None:
        if not d.reading and not d.eof:
            d.reading = True
            self.loop.add_reader(d.src, self._readable, d)

    def _read_off(self, d: _Direction) -> None:
        if d.reading:
            d.reading = False
            self.loop.remove_reader(d.src)

    def _write_on(self, d: _Direction) -> None:
        if not d.writing:
            d.writing = True
            self.loop.add_writer(d.dst, self._writable, d)

    def _write_off(self, d: _Direction) -> None:
        if d.writing:
            d.writing = False
            self.loop.remove_writer(d.dst)

    # -- moving bytes --------------------------------------------------------------------

    def _readable(self, d: _Direction) -> None:
        pipe = d.pipe
        if pipe is None:
            try:
                pipe = d.pipe = _PIPES.get()
            except OSError as exc:  # out of descriptors: end this tunnel, not the process
                self._fail(exc)
                return
        try:
            n = os.splice(d.src, pipe[1], pipe[2] - d.pending, flags=_FLAGS)
        except BlockingIOError:
            if d.pending:  # the pipe's slots are full: read again once it drains
                self._read_off(d)
            else:
                self._release(d)
            return
        except OSError as exc:
            self._fail(exc)
            return
        if n == 0:  # the sender's FIN: pass it on once the pipe is drained
            d.eof = True
            self._read_off(d)
        else:
            d.pending += n
            self.owner.spliced(d.upward, n)
        self._drain(d)

    def _writable(self, d: _Direction) -> None:
        self._drain(d)

    def _drain(self, d: _Direction) -> None:
        if self.stopped:
            return
        pipe = d.pipe
        try:
            while d.pending:
                assert pipe is not None
                d.pending -= os.splice(pipe[0], d.dst, d.pending, flags=_FLAGS)
        except BlockingIOError:
            # The destination's buffer is full: write when it takes more; meanwhile keep
            # reading into the pipe while it has room (so the sender is not stalled too).
            self._write_on(d)
            if pipe is not None and d.pending >= pipe[2]:
                self._read_off(d)
            else:
                self._read_on(d)
            return
        except OSError as exc:
            self._fail(exc)
            return
        self._write_off(d)
        self._release(d)
        if d.eof:
            with contextlib.suppress(OSError):
                _shutdown_write(d.dst)
            self.owner.splice_eof(d.upward)
        else:
            self._read_on(d)

    @staticmethod
    def _release(d: _Direction) -> None:
        """Give an empty pipe back to the pool (an idle direction holds none)."""
        if d.pipe is not None and not d.pending:
            _PIPES.put(d.pipe)
            d.pipe = None

    def _fail(self, exc: OSError) -> None:
        if not self.stopped:
            self.stop()
            self.owner.splice_failed(exc)

    def stop(self, keep_client: bool = False) -> int | None:
        """Stop relaying and close both sockets, or all but the client's with
        `keep_client` (returned: the caller closes it later). Idempotent."""
        if self.stopped:
            return None
        self.stopped = True
        for d in self._dirs:
            self._read_off(d)
            self._write_off(d)
            if d.pipe is not None:
                _PIPES.put(d.pipe, empty=not d.pending)
                d.pipe = None
        _PIPES.leave()
        client, upstream = self._fds
        with contextlib.suppress(OSError):
            os.close(upstream)
        if keep_client:
            return client
        with contextlib.suppress(OSError):
            os.close(client)
        return None


def _shutdown_write(fd: int) -> None:
    """Half-close `fd` for writing (the FIN travels on; the other direction stays open)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()
