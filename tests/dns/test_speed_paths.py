"""The filter's fast paths keep their promises, over real sockets: an allowed query reaches
the upstream byte for byte (only the id is ours), the pooled upstream sockets match answers
by id and ignore forged ones, a silent upstream still times out, and the decision cache
never outlives the policy it was made under."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord, EDNSOption

from egressguard.dns import FilterConfig, FilterThread, holder_for
from egressguard.dns.upstream import UdpPool, UpstreamError
from egressguard.policyfile import load_active
from tests.dns.conftest import POLICY

pytestmark = pytest.mark.timeout(60)


class RawUpstream:
    """A UDP DNS server that records the exact bytes it receives and answers A queries
    with 93.184.216.34; `forge` first sends an answer with a wrong id."""

    def __init__(self, forge: bool = False, silent: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.received: list[bytes] = []
        self.sources: set[int] = set()
        self.forge, self.silent = forge, silent
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
            reply = DNSRecord.parse(data).reply()
            reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A("93.184.216.34"), ttl=60))
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
