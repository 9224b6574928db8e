"""One gateway worker of `serve --workers N` (`python -m egressguard.cli.worker FD PID`).

A worker is an ordinary `Gateway` (one holder, one checkpoint) listening with
SO_REUSEPORT beside its siblings, with none of the host's singletons: the parent follows
the policy source and sends each version in force down the socket pair (the worker
compiles it and swaps its holder), relays key suspensions, and writes the audit log (the
worker's sink, `RelaySink`, ships packed batches of events up the same socket, which the
parent forwards to its audit writer undecoded; a refusal waits for the parent's
acknowledgement that its record is durable, as with `AuditLog.record`).

Fail closed: when the parent is gone (end of the socket stream) the worker suspends its
checkpoint, so nothing more is relayed without a policy feed or an audit log, and exits
at once; the kernel kills it too if the parent dies first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from egressguard import logsetup
from egressguard.audit.log import Raw, pack_raws, raw_or_drop
from egressguard.audit.remote import die_with_parent
from egressguard.cli.workerwire import Wire
from egressguard.enforce.events import DecisionEvent, EventSink, NullSink
from egressguard.engine import CompileError
from egressguard.engine.holder import SnapshotHolder
from egressguard.gateway import Gateway, Resolver
from egressguard.source import active_of

log = logging.getLogger("egressguard.gateway")
MAX_PENDING = 100_000   # events queued for the parent beyond this are dropped (and logged)
# Fire-and-forget events linger this long for company: one frame (one wake-up of this
# sender, of the parent's relay and of its writer's sender) per this many seconds, not one
# per request; the parent's writer lingers as long (`AuditLog.max_delay`) before a commit.
LINGER = 0.05
PARENT_GONE = "the supervising serve process is gone (no policy feed, no audit log)"


class RelaySink:
    """The worker's audit sink: events queued here, shipped in batches to the parent by a
    sender thread (the event loop only appends the event), each batch packed once as the
    audit writer reads it (`audit.log.pack_raws`: the parent forwards it unchanged);
    `record` returns once the parent acknowledged the event durable."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[Raw] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()   # a refusal waits: no lingering
        self._idle = False
        self._urgent = False
        self._closing = False
        self._seq = 0
        self._acked = 0
        self._dropped = 0
        self._waiters: list[tuple[int, asyncio.Future[None] | threading.Event]] = []
        self._thread = threading.Thread(target=self._run, name="audit-relay", daemon=True)
        self._thread.start()

    def emit(self, event: DecisionEvent) -> None:
        """Queue the event's field tuple (`AuditLog.emit` says why a tuple)."""
        if (raw := raw_or_drop(event)) is None:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._dropped += 1
                if self._dropped & (self._dropped - 1) == 0:
                    log.error("audit relay queue full: %d events dropped", self._dropped)
                return
            self._seq += 1
            self._pending.append(raw)
        if self._idle:
            self._wake.set()

    async def record(self, event: DecisionEvent) -> None:
        assert self.loop is not None
        if (raw := raw_or_drop(event)) is None:
            return   # nothing of its own to wait for
        future: asyncio.Future[None] = self.loop.create_future()
        with self._lock:
            self._seq += 1
            self._pending.append(raw)
            self._urgent = True
            self._waiters.append((self._seq, future))
        self._hurry.set()
        self._wake.set()
        await future

    def acknowledge(self, seq: int) -> None:
        """The parent committed every event up to `seq` (receiver thread)."""
        with self._lock:
            self._acked = max(self._acked, seq)
            done = [w for t, w in self._waiters if t <= seq]
            self._waiters = [(t, w) for t, w in self._waiters if t > seq]
        for waiter in done:
            if isinstance(waiter, threading.Event):
                waiter.set()
            elif self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(_resolve, waiter)

    def _run(self) -> None:
        while True:
            self._idle = True
            self._wake.wait(0.05)
            self._idle = False
            self._wake.clear()
            if not self._urgent:
                self._hurry.wait(LINGER)
            self._hurry.clear()
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                last, urgent, closing = self._seq, self._urgent, self._closing
                self._urgent = False
            if batch or urgent:  # urgent and empty: an acknowledgement of what was sent
                self.wire.send("events", last, urgent, len(batch), pack_raws(batch))
            if closing and not batch:
                return

    def close(self, timeout: float) -> None:
        """Ship what is queued and wait (up to `timeout`) until the parent has it durable."""
        done = threading.Event()
        with self._lock:
            self._closing = True
            self._urgent = True
            self._hurry.set()
            if self._acked >= self._seq:
                done.set()
            else:
                self._waiters.append((self._seq, done))
        self._wake.set()
        if not done.wait(timeout):
            log.error("audit relay: events not acknowledged by the parent within %g s",
                      timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Worker:
    """The worker's gateway and its side of the wire."""

    def __init__(self, wire: Wire, config: dict[str, Any]) -> None:
        self.wire = wire
        self.config = config
        self.holder = SnapshotHolder(active_of(*config["policy"]))
        self.relay = RelaySink(wire) if config["audit"] else None
        sink: EventSink = self.relay if self.relay is not None else NullSink()
        self.follower: Any = None
        identities = None
        if config.get("identities_url"):  # followed here too (as `serve` does alone)
            from egressguard.identity.follow import follow_identities
            from egressguard.keys.runtime import seal_store

            identities, self.follower = follow_identities(config["identities_url"],
                                                          seal=seal_store)
        from egressguard.identity import JwtConfig

        jwt = JwtConfig.from_options(*config.get("jwt") or (None, None, None))
        self.gateway = Gateway(
            self.holder, sink, Resolver(config["static"], system=config["system"],
                                        nameservers=config["nameservers"],
                                        ask=_dns_ask() if config["nameservers"] else None),
            config["limits"], report_only=config["report_only"], cluster=config["cluster"],
            identities=identities, jwt=jwt)
        if config["suspended"]:
            self.gateway.checkpoint.suspend(config["suspended"])
        self.stop = asyncio.Event()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        if self.relay is not None:
            self.relay.loop = loop
        try:
            await self.gateway.start(self.config["host"], self.config["port"],
                                     reuse_port=True)
        except OSError as exc:
            self.wire.send("failed", f"cannot listen on {self.config['host']}:"
                                     f"{self.config['port']}: {exc.strerror or exc}")
            return 2
        if self.config.get("mtls"):
            from egressguard.gateway.mtls import server_context

            host, port, cert, key, ca = self.config["mtls"]
            try:
                await self.gateway.start_tls(
                    host, port, server_context(Path(cert), Path(key), Path(ca)),
                    reuse_port=True)
            except OSError as exc:
                self.wire.send("failed", f"cannot listen on {host}:{port} (--tls-listen): "
                                         f"{exc.strerror or exc}")
                await self.gateway.stop(0)
                return 2
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        threading.Thread(target=self._receive, args=(loop,), name="worker-wire",
                         daemon=True).start()
        self.wire.send("ready", self.gateway.addresses)
        self.wire.send("active", self.holder.active.version)
        await self.stop.wait()
        if self.follower is not None:
            self.follower.stop()
        await self.gateway.stop(0 if self.gateway.checkpoint.suspended == PARENT_GONE
                                else None)
        if self.relay is not None and self.gateway.checkpoint.suspended != PARENT_GONE:
            self.relay.close(self.config["limits"].audit_timeout)
        return 0

    def _receive(self, loop: asyncio.AbstractEventLoop) -> None:
        """The parent's messages, in order, until the stream ends (then fail closed)."""
        while (message := self.wire.receive()) is not None:
            kind = message[0]
            if kind == "policy":
                self._swap(*message[1:])
            elif kind == "ack" and self.relay is not None:
                self.relay.acknowledge(message[1])
            elif kind == "suspend":
                self.gateway.checkpoint.suspend(message[1])
            elif kind == "resume":
                self.gateway.checkpoint.resume()
        log.error("worker %d: %s; refusing everything and exiting", os.getpid(), PARENT_GONE)
        self.gateway.checkpoint.suspend(PARENT_GONE)
        loop.call_soon_threadsafe(self.stop.set)

    def _swap(self, policy: Any, version: str, source: str) -> None:
        try:
            active = active_of(policy, version, source)
        except CompileError as exc:  # the parent compiled it: only a catalog drift
            log.error("worker %d: policy %s does not compile here; keeping %s: %s",
                      os.getpid(), version, self.holder.active.version, exc)
            return
        self.holder.swap(active)
        self.wire.send("active", version)


def _dns_ask() -> Any:
    from egressguard.dns.client import ask

    return ask


def main(argv: list[str]) -> int:
    fd, parent = int(argv[0]), int(argv[1])
    die_with_parent(parent)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # the parent reloads, then tells us
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent stops us with SIGTERM
    wire = Wire(socket.socket(fileno=fd))
    hello = wire.receive()
    if hello is None or hello[0] != "hello":
        return 2
    config: dict[str, Any] = hello[1]
    logsetup.configure(config["log_level"], config["log_format"])
    from egressguard.cli.serve import _run

    codes: list[int] = []

    async def run() -> None:
        codes.append(await Worker(wire, config).serve())

    _run(run())
    return codes[0] if codes else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
