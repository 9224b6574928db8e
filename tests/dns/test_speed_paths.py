"""The filter's fast paths keep their promises, over real sockets: an allowed query reaches
the upstream byte for byte (only the id is ours), the pooled upstream sockets match answers
by id and ignore forged ones, a silent upstream still times out, and the decision cache
never outlives the policy it was made under."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSLabel, DNSRecord, EDNSOption

from egressguard.dns import FilterConfig, FilterThread, holder_for
from egressguard.dns.upstream import UdpPool, UpstreamError
from egressguard.engine.holder import SnapshotHolder
from egressguard.policyfile import load_active
from tests.dns.conftest import POLICY, ListSink

pytestmark = pytest.mark.timeout(60)


class RawUpstream:
    """A UDP DNS server that records the exact bytes it receives and answers A queries
    with `address` (93.184.216.34 unless changed); `forge` first sends an answer with a
    wrong id; `other_name`: answer as if that name had been asked (a lying upstream);
    `extra_records`: that many more A records."""

    def __init__(self, forge: bool = False, silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.received: list[bytes] = []
        self.sources: set[int] = set()
        self.forge, self.silent = forge, silent
        self.address_answered = "93.184.216.34"
        self.other_name: str | None = None
        self.extra_records = 0  # more A records (public addresses) in every answer
        self.ttl = 60
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            self.received.append(data)
            self.sources.add(addr[1])
            if self.silent:
                continue
            query = DNSRecord.parse(data)
            if self.other_name is not None:
                query.questions[0].qname = DNSLabel(self.other_name)
            reply = query.reply()
            reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A(self.address_answered),
                                ttl=self.ttl))
            for i in range(self.extra_records):
                reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A(f"93.184.217.{i}"),
                                    ttl=60))
            packed = bytes(reply.pack())
            if self.forge:
                wrong = (int.from_bytes(packed[:2], "big") + 1) % 65536
                forged = DNSRecord.parse(packed)
                forged.rr[0].rdata = A("127.0.0.1")
                self.sock.sendto(wrong.to_bytes(2, "big") + bytes(forged.pack())[2:], addr)
            self.sock.sendto(packed, addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream()
    yield server
    server.close()


def test_allowed_query_is_forwarded_byte_for_byte_except_the_id(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    config = FilterConfig(listen=("127.0.0.1", 0), upstream=raw_upstream.address, timeout=2)
    with FilterThread(holder_for(policy_file), config) as filt:
        query = DNSRecord.question("Allowed.Example.com", "A")
        query.header.id = 0x4242
        query.add_ar(EDNS0(udp_len=1400, opts=[EDNSOption(10, b"cookie!!")]))
        sent = bytes(query.pack())
        reply = DNSRecord.parse(DNSRecord.parse(sent).send(*filt.address, timeout=5))
    assert reply.header.id == 0x4242 and reply.header.rcode == RCODE.NOERROR
    assert str(reply.rr[0].rdata) == "93.184.216.34"
    assert len(raw_upstream.received) == 1
    assert raw_upstream.received[0][2:] == sent[2:]  # case, flags, EDNS cookie untouched


def test_forged_answer_with_a_wrong_id_is_ignored_by_the_pool() -> None:
    upstream = RawUpstream(forge=True)
    try:
        async def ask() -> bytes:
            pool = UdpPool(upstream.address, size=2)
            try:
                query = bytes(DNSRecord.question("allowed.example.com").pack())
                return await pool.query(query, 2.0)
            finally:
                pool.close()
        answer = DNSRecord.parse(asyncio.run(ask()))
    finally:
        upstream.close()
    assert [str(rr.rdata) for rr in answer.rr] == ["93.184.216.34"]  # not the forged 127.0.0.1


def test_silent_upstream_times_out_through_the_sweep() -> None:
    upstream = RawUpstream(silent=True)
    try:
        async def ask() -> float:
            pool = UdpPool(upstream.address)
            start = time.monotonic()
            try:
                with pytest.raises(UpstreamError, match="timed out"):
                    await pool.query(bytes(DNSRecord.question("a.example.com").pack()), 0.3)
                return time.monotonic() - start
            finally:
                pool.close()
        elapsed = asyncio.run(ask())
    finally:
        upstream.close()
    assert 0.3 <= elapsed < 3.0


def test_pool_sockets_are_replaced_after_rotate_queries(raw_upstream: RawUpstream) -> None:
    async def ask() -> None:
        pool = UdpPool(raw_upstream.address, size=1, rotate=3)
        try:
            for _ in range(9):
                await pool.query(bytes(DNSRecord.question("a.example.com").pack()), 2.0)
        finally:
            pool.close()
    asyncio.run(ask())
    assert len(raw_upstream.received) == 9
    assert len(raw_upstream.sources) == 3  # a fresh source port every 3 queries


def test_upstream_query_ids_stay_unpredictable_across_refills_of_the_random_ids(
        raw_upstream: RawUpstream) -> None:
    # The pool reads its random ids 512 at a time: every batch must be fresh randomness
    # (an off-path attacker guessing ids gains nothing from the batching).
    async def ask() -> None:
        pool = UdpPool(raw_upstream.address, size=1)
        try:
            query = bytes(DNSRecord.question("a.example.com").pack())
            for _ in range(26):  # a few at a time: the test upstream is one thread
                await asyncio.gather(*(pool.query(query, 5.0) for _ in range(50)))
        finally:
            pool.close()
    asyncio.run(ask())
    ids = [int.from_bytes(packet[:2], "big") for packet in raw_upstream.received]
    assert len(ids) == 1300
    assert len(set(ids)) > 1200  # ~13 repeats expected among 1,300 random 16-bit ids
    assert ids[:512] != ids[512:1024] and ids[:100] != sorted(ids[:100])


def test_policy_swap_invalidates_the_decision_cache(raw_upstream: RawUpstream,
                                                    tmp_path: Path) -> None:
    allow, deny = tmp_path / "allow.yaml", tmp_path / "deny.yaml"
    allow.write_text(POLICY)
    deny.write_text("restrict_outbound_network_access: true\n")
    holder = holder_for(allow)
    config = FilterConfig(listen=("127.0.0.1", 0), upstream=raw_upstream.address, timeout=2)
    with FilterThread(holder, config) as filt:
        def rcode() -> int:
            data = DNSRecord.question("allowed.example.com").send(*filt.address, timeout=5)
            return int(DNSRecord.parse(data).header.rcode)
        assert [rcode(), rcode()] == [RCODE.NOERROR, RCODE.NOERROR]  # second: a cache hit
        holder.swap(load_active(deny))
        assert rcode() == RCODE.NXDOMAIN
        holder.swap(load_active(allow))
        assert rcode() == RCODE.NOERROR
    assert len(raw_upstream.received) == 3  # the refused question never went upstream


def _filter(upstream: RawUpstream, holder: SnapshotHolder, sink: ListSink | None = None,
            **config: object) -> FilterThread:
    """A filter with one upstream socket: from the second query on, every allowed query
    takes the callback path (the first opens the socket), and the third of a name is
    answered from the answer cache."""
    return FilterThread(holder, FilterConfig(
        listen=("127.0.0.1", 0), upstream=upstream.address, timeout=2, upstream_sockets=1,
        **config), sink)  # type: ignore[arg-type]


def _ask(addr: tuple[str, int], name: str = "allowed.example.com") -> DNSRecord:
    return DNSRecord.parse(DNSRecord.question(name).send(*addr, timeout=5))


def _refusal(reply: DNSRecord) -> str:
    """The RCODE and the extended error's text of a reply."""
    texts = [bytes(o.data[2:]).decode() for rr in reply.ar if rr.rtype == QTYPE.OPT
             for o in rr.rdata if o.code == 15]
    return f"{RCODE[reply.header.rcode]} {' '.join(texts)}".strip()


def test_a_name_rebound_to_a_private_address_after_cached_allows_is_still_refused(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    with _filter(raw_upstream, holder_for(policy_file)) as filt:
        first, miss, hit = (_ask(filt.address) for _ in range(3))
        raw_upstream.address_answered = "127.0.0.1"
        rebound = DNSRecord.question("allowed.example.com")
        rebound.add_ar(EDNS0())
        refused = DNSRecord.parse(rebound.send(*filt.address, timeout=5))
        raw_upstream.address_answered = "93.184.216.34"
        back = _ask(filt.address)
    assert [str(r.rr[0].rdata) for r in (first, miss, hit, back)] == ["93.184.216.34"] * 4
    assert "NXDOMAIN" in _refusal(refused) and "127.0.0.1 (loopback" in _refusal(refused)
    assert not refused.rr


def test_a_cached_answer_is_checked_again_under_a_new_policy(
        raw_upstream: RawUpstream, tmp_path: Path) -> None:
    # The question is allowed under both policies; only the answer (a private address
    # that the first policy's network rule names) is refused by the second.
    with_net, without = tmp_path / "with.yaml", tmp_path / "without.yaml"
    with_net.write_text(POLICY)
    without.write_text(POLICY.split("network_rule_collections:")[0])
    raw_upstream.address_answered = "10.1.2.3"
    holder = holder_for(with_net)
    with _filter(raw_upstream, holder) as filt:
        allowed = [_ask(filt.address).header.rcode for _ in range(3)]
        holder.swap(load_active(without))
        refused = _ask(filt.address).header.rcode
        holder.swap(load_active(with_net))
        again = _ask(filt.address).header.rcode
    assert allowed == [RCODE.NOERROR] * 3
    assert (refused, again) == (RCODE.NXDOMAIN, RCODE.NOERROR)


def test_an_answer_cached_for_one_name_is_not_accepted_for_another(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    with _filter(raw_upstream, holder_for(policy_file)) as filt:
        for _ in range(3):  # a.example.com's answer, cached by its bytes
            assert _ask(filt.address, "a.example.com").header.rcode == RCODE.NOERROR
        raw_upstream.other_name = "a.example.com"  # b's question answered with a's bytes
        lied = _ask(filt.address, "b.example.com")
    assert lied.header.rcode == RCODE.SERVFAIL and not lied.rr


def test_every_cached_answer_is_audited_with_the_fields_of_the_first(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    sink, holder = ListSink(), holder_for(policy_file)
    with _filter(raw_upstream, holder, sink) as filt:
        for _ in range(4):  # the coroutine path, a miss, then two cache hits
            _ask(filt.address, "Allowed.Example.com")
    assert len(sink.events) == 4
    fields = [{k: v for k, v in e.as_dict().items() if k not in ("time", "connection_id")}
              for e in sink.events]
    assert fields[0] == fields[1] == fields[2] == fields[3]
    assert (fields[0]["host"], fields[0]["resolved_address"], fields[0]["method"],
            fields[0]["protocol"], fields[0]["verdict"], fields[0]["port"]) == (
        "allowed.example.com", "93.184.216.34", "A", "udp", "allow", None)
    assert len({e.connection_id for e in sink.events}) == 4
    assert (fields[0]["policy_version"], fields[0]["cluster"]) == (holder.active.version,
                                                                   "default")


def test_what_is_alive_once_the_filter_listens_is_left_out_of_collector_passes(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    # Else every full pass of the cycle collector walks the whole process again (tens of
    # ms holding the GIL while queries wait).
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with _filter(raw_upstream, holder_for(policy_file)):
        frozen = gc.get_freeze_count()
    gc.unfreeze()
    assert frozen > 10_000


def test_a_large_answer_is_checked_every_time_and_never_held_by_its_bytes(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    # An allowed name with a big answer must not let a client fill memory with the
    # answer cache's keys.
    raw_upstream.extra_records = 100  # ~1.6 KB of A records
    with _filter(raw_upstream, holder_for(policy_file)) as filt:
        for _ in range(3):
            query = DNSRecord.question("big.example.com")
            query.add_ar(EDNS0(udp_len=4096))
            reply = DNSRecord.parse(query.send(*filt.address, timeout=5))
            assert reply.header.rcode == RCODE.NOERROR and len(reply.rr) == 101
        memo = filt.filter._memo
        assert memo is not None and not memo.replies


def test_an_upstream_counting_ttls_down_neither_grows_the_answer_cache_nor_evicts_decisions(
        raw_upstream: RawUpstream, policy_file: Path) -> None:
    # A caching resolver's answers change every second (the TTL): each is new bytes.
    with _filter(raw_upstream, holder_for(policy_file), cache_size=4) as filt:
        assert _ask(filt.address).header.rcode == RCODE.NOERROR
        memo = filt.filter._memo
        for ttl in range(59, 40, -1):
            raw_upstream.ttl = ttl
            reply = _ask(filt.address)
            assert reply.header.rcode == RCODE.NOERROR and reply.rr[0].ttl == ttl
        assert filt.filter._memo is memo and memo is not None  # decisions kept
        assert 0 < len(memo.replies) <= 4
