"""`ProcessAuditLog`: the same audit log with its sealing and SQL in a child process.

Sealing and inserting cost tens of microseconds of CPU per event; inside the gateway's
process that CPU competes (through the GIL) with the event loop. Here the gateway keeps
only the queue: a sender thread turns each batch of queued events into plain tuples
(`attrgetter`, no conversion) and ships the batch as one frame of marshalled parts
(`pack_raws`) through a pipe to `python -m egressguard.audit.remote`, which batches,
seals, commits and answers with the highest committed sequence number. A batch a
gateway worker already packed (`AuditLog.forward`, `serve --workers`) is one such part,
copied into the frame as it came.

The acknowledgement contract is `AuditLog`'s: `record`/`flush` return only after the child
reported the commit. Frames sent but not yet acknowledged stay in memory; if the child
dies it is restarted and they are sent again (so a child crash between commit and
acknowledgement can store a batch twice: at-least-once; kill -9 of the gateway itself
loses only unacknowledged events, as with `AuditLog`). The child dies with the gateway
(PR_SET_PDEATHSIG, and the stdin EOF it reads on a clean stop); its acknowledgements carry
one more bit, set while it spools (`degraded`).
"""

from __future__ import annotations

import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import URL

from egressguard.audit import metrics
from egressguard.audit.crypto import load_or_create_key
from egressguard.audit.log import (
    AuditLog,
    Raw,
    Retention,
    pack_raws,
    segments,
    unpack_raws,
)
from egressguard.audit.priority import WriterPriority

log = logging.getLogger("egressguard.audit")
_LEN = struct.Struct(">I")
_ACK = struct.Struct(">Q")
_HEAD = struct.Struct(">Q?")     # a frame's last seq and urgent flag
_DEGRADED = 1 << 63        # set in an acknowledgement while the child spools


class ProcessAuditLog(AuditLog):
    """`AuditLog` whose writer runs in a child process (same interface and guarantee)."""

    def __init__(self, url: str | URL | None = None, *, key: bytes | None = None,
                 batch_size: int = 2000, max_pending: int = 100_000,
                 max_delay: float = 0.05, retention: Retention | None = None,
                 cluster_key: Any = None, background: bool = True) -> None:
        """`cluster_key` (`keys.runtime.ClusterKey`): this process reads with its
        envelope; the child opens the same cluster's key itself and seals under it.
        `background`: the child runs as SCHED_IDLE while it keeps up (`priority`)."""
        key = key if key is not None else load_or_create_key()
        super().__init__(url, key=key, batch_size=batch_size, max_pending=max_pending,
                         max_delay=max_delay, retention=retention, start=False,
                         envelope=cluster_key.envelope if cluster_key is not None else None)
        self._key = key
        self._cmk = ("" if cluster_key is None else cluster_key.cluster,
                     0.0 if cluster_key is None else cluster_key.envelope.check_interval)
        self._url = self.engine.url.render_as_string(hide_password=False)
        self._proc_lock = threading.Lock()
        self._inflight: deque[tuple[int, bytes, float]] = deque()   # (last, frame, sent)
        self._priority = WriterPriority(enabled=background)
        self._stopping_child = False
        self._spawned = threading.Event()
        # The receiver thread spawns every child: PR_SET_PDEATHSIG fires when the thread
        # that forked the child ends, and this thread lives as long as the log does.
        self._receiver = threading.Thread(target=self._receive, name="audit-acks",
                                          daemon=True)
        self._receiver.start()
        self._spawned.wait()
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "egressguard.audit.remote", str(self.batch_size), "0",
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ},
            # Its own process group: a terminal's Ctrl-C reaches the gateway only, which then
            # drains and stops the writer in order (no KeyboardInterrupt mid-write).
            process_group=0)
        self._priority.attach(child.pid)
        assert child.stdin is not None
        # Secrets never in argv or env.
        hello = marshal.dumps((self._key, self._url, *self._cmk), 2)
        child.stdin.write(_LEN.pack(len(hello)) + hello)
        child.stdin.flush()
        return child

    def _send(self, frame: bytes) -> None:
        stdin = self._child.stdin
        assert stdin is not None
        try:
            stdin.write(_LEN.pack(len(frame)) + frame)
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the receiver sees the child gone and resends everything in flight

    def _run(self) -> None:
        """Sender: queue -> frames (last seq, urgent, packed raw tuples) -> child. A batch
        a gateway worker packed (`forward`) goes into the frame as it came."""
        while (item := self._next_batch()) is not None:
            batch, last = item
            frame = _frame(last, bool(self._waiters),
                           [data if packed else pack_raws(part)
                            for packed, data, part in segments(batch)])
            with self._proc_lock:
                self._inflight.append((last, frame, time.monotonic()))
                self._send(frame)
            self._pace()
            self._maybe_prune()
        with self._proc_lock:
            self._stopping_child = True
            if self._child.stdin is not None:
                self._child.stdin.close()   # the child writes what it has, then exits

    def _receive(self) -> None:
        self._child = self._spawn()
        self._spawned.set()
        while True:
            stdout = self._child.stdout
            assert stdout is not None
            data = stdout.read(_ACK.size)
            if len(data) == _ACK.size:
                seq = _ACK.unpack(data)[0]
                if self._degraded != bool(seq & _DEGRADED):
                    self._degraded = bool(seq & _DEGRADED)
                    metrics.AUDIT_DEGRADED.set(int(self._degraded))
                seq &= ~_DEGRADED
                with self._proc_lock:
                    while self._inflight and self._inflight[0][0] <= seq:
                        self._inflight.popleft()
                self._acknowledge(seq)
                self._pace()
                continue
            self._child.wait()
            with self._proc_lock:
                if self._stopping_child:
                    return
                log.error("audit writer process exited (%s); restarting, resending %d "
                          "unacknowledged batches", self._child.returncode,
                          len(self._inflight))
                time.sleep(0.2)
                self._child = self._spawn()
                for _, frame, _ in self._inflight:
                    self._send(frame)

    # -- the child's priority (`priority`) ---------------------------------------------

    def _pace(self) -> None:
        """Background or normal priority for the child, from what it has not acknowledged
        and whether anyone waits (called on every frame sent, acknowledgement, waiter
        and idle tick)."""
        inflight = self._inflight
        try:
            oldest: float | None = inflight[0][2]
        except IndexError:
            oldest = None
        self._priority.update(len(inflight), oldest, bool(self._waiters),
                              time.monotonic())

    def _register(self, target: int, callback: Callable[[], None]) -> bool:
        waits = super()._register(target, callback)
        if waits:
            self._pace()   # someone waits for the child: it must not wait for idle CPU
        return waits

    def _sleep_for(self) -> float | None:
        """While the child is in the background with frames unacknowledged, wake in time
        to notice it falling behind (`tick`)."""
        sleep = super()._sleep_for()
        if self._priority.background and self._inflight:
            late = self._priority.pacer.late_after
            return late if sleep is None else min(sleep, late)
        return sleep

    def tick(self) -> None:
        self._pace()
        super().tick()

    def close(self, timeout: float = 30.0) -> None:
        if not self._stop():
            return
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        self._receiver.join(max(0.0, deadline - time.monotonic()))
        if self._receiver.is_alive():      # the child did not finish in time: end it
            log.error("audit writer process did not finish within %g s; stopping it "
                      "(%d batches unacknowledged)", timeout, len(self._inflight))
            with self._proc_lock:
                self._stopping_child = True
            self._child.kill()
            self._receiver.join(5)
        self.engine.dispose()


def _frame(last: int, urgent: bool, parts: list[bytes]) -> bytes:
    """(last seq, urgent) then each `pack_raws` part, length-prefixed (`_unframe`)."""
    out = [_HEAD.pack(last, urgent)]
    for part in parts:
        out += (_LEN.pack(len(part)), part)
    return b"".join(out)


def _unframe(frame: bytes) -> tuple[int, bool, list[Raw]]:
    last, urgent = _HEAD.unpack_from(frame)
    view = memoryview(frame)
    raws: list[Raw] = []
    at = _HEAD.size
    while at < len(frame):
        size = _LEN.unpack_from(frame, at)[0]
        at += _LEN.size
        raws += unpack_raws(view[at:at + size])
        at += size
    return last, bool(urgent), raws


class _Frames:
    """Length-prefixed frames from a file descriptor, with a timeout."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def _complete(self) -> bytes | None:
        if len(self.buf) < _LEN.size:
            return None
        size = _LEN.unpack_from(self.buf)[0]
        if len(self.buf) < _LEN.size + size:
            return None
        frame = bytes(self.buf[_LEN.size:_LEN.size + size])
        del self.buf[:_LEN.size + size]
        return frame

    def next(self, timeout: float | None) -> bytes | None:
        """The next frame, or None on timeout or end of input."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._complete()
            if frame is not None or self.eof:
                return frame
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining is not None and remaining == 0.0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                self.eof = True
            self.buf += chunk


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux prctl), and exit
    now if the parent is already gone (it died before the prctl took effect). What the
    child holds then is unacknowledged, which the contract allows to lose."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):   # not Linux: the stdin EOF watch still applies
        pass
    if parent and os.getppid() != parent:
        os._exit(0)


def child_main(batch_size: int, max_delay: float, parent: int = 0) -> None:
    die_with_parent(parent)
    frames = _Frames(sys.stdin.fileno())
    hello = frames.next(None)
    if hello is None:
        return
    key, url, cluster, interval = (*marshal.loads(hello), "", 0.0)[:4]
    cluster_key = _open_cluster_key(url, cluster, interval) if cluster else None
    writer = AuditLog(url, key=key, start=False,
                      envelope=cluster_key.envelope if cluster_key is not None else None)
    writer._resume()
    try:
        _serve_frames(writer, frames, batch_size, max_delay)
    finally:
        writer._finish()


def _open_cluster_key(url: str, cluster: str, interval: float) -> Any:
    """The cluster's key for the child writer. The gateway has one, so this writer must
    never fall back to the local key: while the store cannot be read it waits (the
    gateway's records stay unacknowledged meanwhile)."""
    from egressguard.keys.provider import KeyUnavailable
    from egressguard.keys.runtime import ClusterKey

    while True:
        try:
            return ClusterKey.open(url, cluster, check_interval=interval)
        except KeyUnavailable as exc:
            log.error("audit writer: cannot read cluster %s's key (%s); retrying", cluster,
                      exc)
            time.sleep(1.0)


def _serve_frames(writer: AuditLog, frames: _Frames, batch_size: int,
                  max_delay: float) -> None:
    out = sys.stdout.buffer
    acked = 0
    while True:
        degraded = writer.degraded
        frame = frames.next(1.0 if degraded else None)
        if frame is None:
            if frames.eof:
                return
            writer.tick()                  # idle while degraded: probe the store
            if writer.degraded != degraded:
                out.write(_ACK.pack(acked | (_DEGRADED if writer.degraded else 0)))
                out.flush()
            continue
        last, urgent, pending = _unframe(frame)
        deadline = time.monotonic() + max_delay
        while not urgent and len(pending) < batch_size and not frames.eof:
            more = frames.next(max(0.0, deadline - time.monotonic()))
            if more is None:
                break
            last, urgent, raws = _unframe(more)
            pending += raws
        writer.write_raws(pending)
        acked = last
        out.write(_ACK.pack(last | (_DEGRADED if writer.degraded else 0)))
        out.flush()
        writer._maybe_prune()


if __name__ == "__main__":
    child_main(int(sys.argv[1]), float(sys.argv[2]),
               int(sys.argv[3]) if len(sys.argv) > 3 else 0)
