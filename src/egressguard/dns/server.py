"""The DNS filter: a forwarding DNS server (UDP and TCP) that decides every question by the
policy before asking the upstream resolver, then decides the answer again.

Denied names get NXDOMAIN (or REFUSED) with an RFC 8914 extended error saying why; an
answer that leads to an address the address guard refuses (DNS rebinding) is replaced by
the same refusal. Nothing a client sends stops the server: a malformed query gets FORMERR,
an unreadable one is dropped, an upstream that does not answer in time gives SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import ipaddress
import logging
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dnslib import RCODE, DNSRecord

from egressguard.dns.decide import CnameMode, NameDecision, check_answer, decide_name
from egressguard.dns.upstream import UdpPool, UpstreamError
from egressguard.dns.wire import (
    EDE_BLOCKED,
    EDE_NETWORK_ERROR,
    EDE_NOT_READY,
    EDE_OTHER,
    Malformed,
    Query,
    Scanned,
    fit_udp,
    parse_query,
    refusal,
    same_question,
    scan_answer,
)
from egressguard.enforce.checkpoint import Checkpoint
from egressguard.enforce.events import DecisionEvent, EventSink
from egressguard.engine import Snapshot
from egressguard.engine.holder import Active, SnapshotHolder
from egressguard.engine.normalize import IPAddress

log = logging.getLogger("egressguard.dns")


class DenyRcode(enum.StrEnum):
    NXDOMAIN = "NXDOMAIN"
    REFUSED = "REFUSED"

    @property
    def code(self) -> int:
        return int(getattr(RCODE, self.value))


@dataclass(frozen=True)
class FilterConfig:
    """How the filter listens, forwards and refuses.

    `report_only` permits every denial and only records it, ORed with the policy's own
    report-only flags (the checkpoint defines report-only once: `enforce.checkpoint`).
    `max_inflight` bounds the queries being worked on at once; beyond it new queries get
    SERVFAIL at once instead of queueing without limit.
    """

    listen: tuple[str, int] = ("127.0.0.1", 5353)
    upstream: tuple[str, int] = ("127.0.0.1", 53)
    deny_rcode: DenyRcode = DenyRcode.NXDOMAIN
    cname_mode: CnameMode = CnameMode.RULES
    report_only: bool = False
    timeout: float = 2.0
    max_inflight: int = 1000
    max_tcp_clients: int = 256
    tcp_idle: float = 10.0
    cluster: str = "default"
    upstream_sockets: int = 4
    cache_size: int = 10000


# Decision cache keys: the question (wire name, client) and the answer, by what it says
# (wire name, client, addresses, chain names) and by its exact bytes (client, the answer
# without its id, stored only when its question is byte for byte the query's). Decisions
# are pure functions of the snapshot and these. The client is its address as the socket
# gives it (text hashes once; the source address it maps to is worked out on a miss).
_AskKey = tuple[bytes, str]
_AnswerKey = tuple[bytes, str, tuple[IPAddress, ...], tuple[tuple[bytes, ...], ...]]
_ReplyKey = tuple[str, bytes]
_Answered = tuple[NameDecision, str]  # the decision and its addresses as the event shows them
_V = TypeVar("_V")
_REMEMBER = 1232  # largest answer remembered by its bytes (keys stay small: 10,000 x 1.2 KB)


class _Memo:
    """What the filter worked out under one snapshot: question decisions, answer decisions
    (by content and by bytes) and the identity of each client. Replaced whole on a policy
    swap or when full, so nothing is ever read under another snapshot than its own. The
    answers by bytes are bounded on their own (`remember`): a caching upstream counts its
    TTLs down, so each second brings new bytes, and those must not push out the rest."""

    __slots__ = ("answers", "asks", "identities", "replies", "size", "snapshot")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.asks: dict[_AskKey, NameDecision] = {}
        self.answers: dict[_AnswerKey, _Answered] = {}
        self.replies: dict[_ReplyKey, _Answered] = {}
        self.identities: dict[str, str] = {}
        self.size = 0  # entries put in the other three tables

    def put(self, table: dict[Any, _V], key: object, value: _V) -> _V:
        self.size += 1
        table[key] = value
        return value

    def remember(self, key: _ReplyKey, found: _Answered, limit: int) -> None:
        if len(self.replies) >= limit:
            self.replies.clear()
        self.replies[key] = found


def _ip(address: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


class DnsFilter:
    """One filter instance; `await start()` binds UDP and TCP on the same port."""

    def __init__(self, holder: SnapshotHolder, config: FilterConfig | None = None,
                 sink: EventSink | None = None) -> None:
        self.holder = holder
        self.config = config or FilterConfig()
        self.checkpoint = Checkpoint(holder, sink, report_only=self.config.report_only,
                                     cluster=self.config.cluster, point="dns")
        self.sink = self.checkpoint.sink
        self.address: tuple[str, int] | None = None
        self._inflight = 0
        self._tcp_clients = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sources: dict[str, IPAddress | None] = {}  # client text -> address
        self._told_suspended: str | None = None
        self._pool = UdpPool(self.config.upstream, self.config.upstream_sockets)
        self._memo: _Memo | None = None

    # -- answering one query -----------------------------------------------------------

    async def answer(self, data: bytes, client: str = "", tcp: bool = False) -> bytes | None:
        """The reply to one query packet (None: drop it). Never raises."""
        try:
            query = parse_query(data)
        except Malformed as exc:
            log.debug("malformed query from %s: %s", client, exc)
            return exc.reply
        except Exception:  # never let a packet take the server down
            log.exception("unreadable query from %s", client)
            return None
        if self._inflight >= self.config.max_inflight:
            return self._servfail(query, "too many queries in flight")
        self._inflight += 1
        try:
            return await self._answer(query, client, tcp)
        except Exception:
            log.exception("error answering %s from %s", query.qname, client)
            return self._servfail(query, "internal error")
        finally:
            self._inflight -= 1

    @staticmethod
    def _servfail(query: Query, text: str) -> bytes | None:
        try:
            return refusal(query, RCODE.SERVFAIL, EDE_OTHER, text)
        except Exception:  # pragma: no cover - parse_query admits only packable questions
            log.exception("cannot answer %s", query.qname)
            return None

    def _denied(self, query: Query, reason: str) -> bytes:
        """A refused question's reply: the deny answer, or SERVFAIL while the cluster is
        suspended (the resolver's "cannot answer now": clients retry, and cache no
        negative answer the policy never gave)."""
        suspended = self.checkpoint.suspended
        if suspended is None:
            return refusal(query, self.config.deny_rcode.code, EDE_BLOCKED, reason)
        if self._told_suspended != suspended:  # once per suspension, not per query
            self._told_suspended = suspended
            log.warning("dns: answering SERVFAIL while the cluster is suspended: %s",
                        suspended)
        log.debug("dns: SERVFAIL %s: cluster suspended: %s", query.qname, suspended)
        return refusal(query, RCODE.SERVFAIL, EDE_NOT_READY, f"cluster suspended: {suspended}")

    def _memo_for(self, snapshot: Snapshot) -> _Memo:
        memo = self._memo
        if memo is None or memo.snapshot is not snapshot or memo.size > self.config.cache_size:
            memo = self._memo = _Memo(snapshot)
        return memo

    def _source(self, client: str) -> IPAddress | None:
        if client in self._sources:
            return self._sources[client]
        if len(self._sources) > 4096:
            self._sources.clear()
        source = self._sources[client] = _ip(client) if client else None
        return source

    def _asked(self, memo: _Memo, query: Query, client: str) -> NameDecision:
        key = (query.qkey, client)
        asked = memo.asks.get(key)
        if asked is None:
            asked = memo.put(memo.asks, key, decide_name(
                memo.snapshot, query.qname, self._source(client),
                decide=self.checkpoint.decide_in))
        return asked

    def _checked(self, memo: _Memo, query: Query, client: str,
                 answer: Scanned | DNSRecord) -> _Answered:
        """The answer's decision (`check_answer`) and its addresses as events show them."""
        if isinstance(answer, Scanned):
            key = (query.qkey, client, answer.addresses, tuple(n.label for n in answer.chain))
            found = memo.answers.get(key)
            if found is not None:
                return found
        final = check_answer(memo.snapshot, query.qname, answer, self.config.cname_mode,
                             self._source(client), self.checkpoint.decide_in)
        found = final, ",".join(map(str, final.addresses))
        if isinstance(answer, Scanned):
            memo.put(memo.answers, key, found)
        return found

    def _identity(self, memo: _Memo, client: str) -> str:
        """Who asks, by the policy's identity sources (the filter's only way to tell)."""
        identity = memo.identities.get(client)
        if identity is None:
            identity = memo.put(memo.identities, client,
                                memo.snapshot.source_identity(self._source(client)) or "")
        return identity

    # -- the UDP hot path: callbacks only, no task per query ----------------------------

    def datagram(self, data: bytes, addr: tuple[str, int],
                 transport: asyncio.DatagramTransport) -> None:
        """Answer one UDP query. A permitted question with a plainly readable answer is
        handled in callbacks (no task, no timer); everything else (refusals, which must be
        durable before the client sees them, truncation, dnslib's cases) takes the
        coroutine path `answer`."""
        try:
            query = parse_query(data)
        except Malformed as exc:
            log.debug("malformed query from %s: %s", addr[0], exc)
            if exc.reply is not None:
                transport.sendto(exc.reply, addr)
            return
        except Exception:  # never let a packet take the server down
            log.exception("unreadable query from %s", addr[0])
            return
        if self._inflight >= self.config.max_inflight:
            reply = self._servfail(query, "too many queries in flight")
            if reply is not None:
                transport.sendto(reply, addr)
            return
        active = self.holder.active
        memo = self._memo_for(active.snapshot)
        asked = self._asked(memo, query, addr[0])
        if not self.checkpoint.permit(asked.decision):
            self._spawn(self._udp_slow(query, addr, transport))
            return

        def answered(result: bytes | Exception) -> None:
            self._inflight -= 1
            try:
                reply = self._udp_answered(active, memo, query, asked, addr, transport, result)
            except Exception:
                log.exception("error answering %s from %s", query.qname, addr[0])
                reply = self._servfail(query, "internal error")
            if reply is not None and not transport.is_closing():
                transport.sendto(reply, addr)

        self._inflight += 1
        if not self._pool.send_nowait(query.data, self.config.timeout, answered):
            self._inflight -= 1
            self._spawn(self._udp_slow(query, addr, transport))

    def _udp_answered(self, active: Active, memo: _Memo, query: Query, asked: NameDecision,
                      addr: tuple[str, int], transport: asyncio.DatagramTransport,
                      result: bytes | Exception) -> bytes | None:
        client = addr[0]
        if not isinstance(result, bytes):
            self._record_now(active, memo, query, asked, "", client, False)
            return refusal(query, RCODE.SERVFAIL, EDE_NETWORK_ERROR, str(result))
        if result[2] & 0x02 or active is not self.holder.active:  # TC: retry over TCP
            self._spawn(self._udp_slow(query, addr, transport))
            return None
        # An answer whose question is byte for byte the query's (what resolvers send) is
        # remembered by its bytes under this snapshot: the same answer again is one lookup,
        # its question needing no other comparison. Any other answer (or a large one) is
        # read and checked.
        found = None
        tail = result[2:]  # all but the upstream's id: the cache key, and the reply's body
        exact = len(result) <= _REMEMBER and result.startswith(query.question, 12)
        if exact:
            key = (client, tail)
            found = memo.replies.get(key)
        if found is None:
            answer = scan_answer(result)
            if answer is None:  # records the scanner leaves to dnslib
                self._spawn(self._udp_slow(query, addr, transport))
                return None
            if not same_question(query, answer):
                self._record_now(active, memo, query, asked, "", client, False)
                return refusal(query, RCODE.SERVFAIL, EDE_OTHER,
                               "upstream answered a different question")
            found = self._checked(memo, query, client, answer)
            if exact:
                memo.remember(key, found, self.config.cache_size)
        final, resolved = found
        if not self.checkpoint.permit(final.decision):
            self._spawn(self._udp_slow(query, addr, transport))
            return None
        self._record_now(active, memo, query, final, resolved, client, False)
        return fit_udp(query, query.data[:2] + tail)

    async def _udp_slow(self, query: Query, addr: tuple[str, int],
                        transport: asyncio.DatagramTransport) -> None:
        if self._inflight >= self.config.max_inflight:
            reply = self._servfail(query, "too many queries in flight")
        else:
            self._inflight += 1
            try:
                reply = await self._answer(query, addr[0], False)
            except Exception:
                log.exception("error answering %s from %s", query.qname, addr[0])
                reply = self._servfail(query, "internal error")
            finally:
                self._inflight -= 1
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    # -- the coroutine path (TCP, refusals, rare answers) -------------------------------

    async def _answer(self, query: Query, client: str, tcp: bool) -> bytes:
        active = self.holder.active
        memo = self._memo_for(active.snapshot)
        cp = self.checkpoint
        asked = self._asked(memo, query, client)
        if not cp.permit(asked.decision):
            await self._record(active, memo, query, asked, "", client, tcp, False)
            return self._denied(query, asked.decision.reason)
        answer: Scanned | DNSRecord
        try:
            raw = await self._pool.resolve(query.data, self.config.timeout, tcp=tcp)
            answer = scan_answer(raw) or DNSRecord.parse(raw)
        except UpstreamError as exc:
            await self._record(active, memo, query, asked, "", client, tcp, True)
            return refusal(query, RCODE.SERVFAIL, EDE_NETWORK_ERROR, str(exc))
        except Exception as exc:  # an answer dnslib cannot read
            await self._record(active, memo, query, asked, "", client, tcp, True)
            return refusal(query, RCODE.SERVFAIL, EDE_OTHER, f"unreadable upstream answer: {exc}")
        if not same_question(query, answer):
            await self._record(active, memo, query, asked, "", client, tcp, True)
            return refusal(query, RCODE.SERVFAIL, EDE_OTHER,
                           "upstream answered a different question")
        final, resolved = self._checked(memo, query, client, answer)
        permitted = cp.permit(final.decision)
        await self._record(active, memo, query, final, resolved, client, tcp, permitted)
        if not permitted:
            return self._denied(query, final.decision.reason)
        if isinstance(answer, Scanned):
            packed = query.data[:2] + raw[2:]  # the upstream's bytes, the client's id
        else:  # re-packed as dnslib read it: the client gets only what was decided
            answer.header.id = query.qid
            packed = bytes(answer.pack())
        return packed if tcp else fit_udp(query, packed)

    async def _record(self, active: Active, memo: _Memo, query: Query, verdict: NameDecision,
                      resolved: str, client: str, tcp: bool, permitted: bool) -> None:
        """The checkpoint's tail: count, emit a permitted decision, make a refusal durable
        before the client sees it (so no client is refused without a record of why).
        `resolved`: the verdict's addresses as the event shows them."""
        if permitted:
            self._record_now(active, memo, query, verdict, resolved, client, tcp)
            return
        cp = self.checkpoint
        cp.note(verdict.decision, False, "dns", client)
        if cp.recording:
            await cp.record(self._event(active, memo, query, verdict, resolved, client, tcp,
                                        False))

    def _record_now(self, active: Active, memo: _Memo, query: Query, verdict: NameDecision,
                    resolved: str, client: str, tcp: bool) -> None:
        """The tail for a permitted decision: count it and emit its event (no waiting)."""
        cp = self.checkpoint
        cp.note(verdict.decision, True, "dns", client)
        if cp.recording:
            cp.emit(self._event(active, memo, query, verdict, resolved, client, tcp, True))

    def _event(self, active: Active, memo: _Memo, query: Query, verdict: NameDecision,
               resolved: str, client: str, tcp: bool, permitted: bool) -> DecisionEvent:
        decision = verdict.decision
        protocol = "tcp" if tcp else "udp"
        identity = self._identity(memo, client)
        if verdict.host == decision.destination and ":" not in verdict.host \
                and active is self.holder.active:
            # The checkpoint's positional path: the same event, its host, port and version
            # following from the decision and the policy in force (worked out once per
            # decision object).
            return self.checkpoint.event(
                decision, permitted, "dns", client_address=client, resolved_address=resolved,
                method=query.qtype_name, protocol=protocol, identity=identity)
        return self.checkpoint.event(
            decision, permitted, "dns", host=verdict.host, client_address=client,
            policy_version=active.version, resolved_address=resolved,
            method=query.qtype_name, protocol=protocol, identity=identity)

    # -- transports --------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Bind UDP and TCP on `config.listen` (port 0: one free port for both)."""
        loop = asyncio.get_running_loop()
        host, port = self.config.listen
        for attempt in range(10):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port))
            bound = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound,
                                                       reuse_address=True)
            except OSError:
                transport.close()
                if port != 0 or attempt == 9:
                    raise
                continue
            self._udp = transport
            self.address = (host, bound)
            # What is alive once the filter listens (modules, the policy, the audit log)
            # lives as long as the process: out of the collector's passes with it, else
            # each full pass walks it all again (tens of ms of GIL, and about a tenth of
            # the CPU per allowed query, as events queued for the audit writer age into
            # the oldest generation). Frozen objects are still freed by reference count.
            gc.freeze()
            return self.address
        raise OSError("no free port")  # pragma: no cover

    async def close(self) -> None:
        self._pool.close()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        if self._tcp_clients >= self.config.max_tcp_clients:
            writer.close()
            return
        self._tcp_clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            idle = self.config.tcp_idle
            while True:
                try:
                    (size,) = struct.unpack("!H", await asyncio.wait_for(
                        reader.readexactly(2), idle))
                    data = await asyncio.wait_for(reader.readexactly(size), idle)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                reply = await self.answer(data, client, tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_clients -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, filt: DnsFilter) -> None:
        self.filt = filt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.filt.datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop where available (the filter's production loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class FilterThread:
    """Run a `DnsFilter` on its own (uv)loop in a daemon thread: for synchronous programs,
    tests and benchmarks. Use as a context manager; `address` is where it listens."""

    def __init__(self, holder: SnapshotHolder, config: FilterConfig | None = None,
                 sink: EventSink | None = None,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = new_loop) -> None:
        self.filter = DnsFilter(holder, config, sink)
        self._loop = loop_factory()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dns-filter",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        assert self.filter.address is not None
        return self.filter.address

    def start(self) -> tuple[str, int]:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.filter.start(), self._loop).result(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.filter.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FilterThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
