"""The gateway's resolver cache against a real DNS server on loopback: answers live for
their TTL (clamped), NXDOMAIN is cached for the SOA's negative TTL, a hit is answered by
`known()` without waiting, and concurrent misses for one name ask the server once."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from egressguard.dns.client import ask
from egressguard.gateway.resolver import ResolveError, Resolver

pytestmark = pytest.mark.timeout(30)


class Zone(BaseResolver):  # type: ignore[misc]
    """web.test (and cdn.test, the same addresses): A and AAAA with TTL `ttl`; anything
    else NXDOMAIN with a SOA of TTL 20."""

    def __init__(self) -> None:
        self.ttl = 60
        self.asked: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name, qtype = str(request.q.qname).lower(), QTYPE[request.q.qtype]
        with self.lock:
            self.asked.append((name, qtype))
        if name in ("web.test.", "cdn.test."):
            if qtype == "A":
                reply.add_answer(RR(name, QTYPE.A, rdata=A("93.184.216.34"), ttl=self.ttl))
            elif qtype == "AAAA":
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=self.ttl))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR("test.", QTYPE.SOA, ttl=20, rdata=SOA(
                "ns.test.", "admin.test.", (1, 60, 60, 60, 20))))
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    resolver = Zone()
    server = DNSServer(resolver, address="127.0.0.1", port=0,
                       logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"))
    server.start_thread()
    yield resolver, server.server.server_address[1]
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _resolver(port: int, clock: Clock, **kw: float) -> Resolver:
    return Resolver(nameservers=[("127.0.0.1", port)], ask=ask, clock=clock,
                    **kw)  # type: ignore[arg-type]


def test_answer_is_cached_for_its_ttl_then_asked_again(zone: tuple[Zone, int]) -> None:
    server, port = zone
    server.ttl = 60
    clock = Clock()
    resolver = _resolver(port, clock)

    async def run() -> None:
        first = await resolver.resolve("web.test", 443)
        assert {str(a) for a in first} == {"93.184.216.34", "2001:db8::1"}
        assert len(server.asked) == 2  # A and AAAA
        clock.now += 59
        assert resolver.known("web.test") == first  # a hit: no await, no server query
        assert await resolver.resolve("web.test", 443) == first
        assert len(server.asked) == 2
        clock.now += 2  # past the 60 s TTL
        assert resolver.known("web.test") is None
        await resolver.resolve("web.test", 443)
        assert len(server.asked) == 4
    asyncio.run(run())


def test_names_at_one_address_are_answered_with_the_same_address_objects(
        zone: tuple[Zone, int]) -> None:
    # What lets a connection opened for one name be matched against another's addresses
    # by identity (`Upstream.reaches`), with no `IPv4Address.__eq__` per request.
    _, port = zone
    resolver = _resolver(port, Clock())

    async def run() -> None:
        web = await resolver.resolve("web.test", 80)
        cdn = await resolver.resolve("cdn.test", 80)
        assert web == cdn and all(a is b for a, b in zip(web, cdn, strict=True))
        assert resolver.known("web.test") is web and resolver.known("cdn.test") is cdn
    asyncio.run(run())
    static = Resolver({"a.test": [ipaddress.ip_address("10.0.0.1")],
                       "b.test": [ipaddress.ip_address("10.0.0.1")]}, system=False)
    a, b = static.known("a.test"), static.known("b.test")
    assert a is not None and b is not None and a[0] is b[0]


@pytest.mark.parametrize(("ttl", "life"), [(0, 5.0), (86400, 100.0)])
def test_ttls_are_clamped_to_the_configured_bounds(zone: tuple[Zone, int], ttl: int,
                                                   life: float) -> None:
    server, port = zone
    server.ttl = ttl
    clock = Clock()
    resolver = _resolver(port, clock, min_ttl=5.0, max_ttl=100.0)

    async def run() -> None:
        await resolver.resolve("web.test", 443)
        clock.now += life - 0.5
        assert resolver.known("web.test") is not None
        clock.now += 1
        assert resolver.known("web.test") is None
    asyncio.run(run())


def test_nxdomain_is_cached_for_the_soa_negative_ttl(zone: tuple[Zone, int]) -> None:
    server, port = zone
    clock = Clock()
    resolver = _resolver(port, clock, negative_ttl=300.0)

    async def run() -> None:
        for _ in range(3):
            with pytest.raises(ResolveError, match="no addresses"):
                await resolver.resolve("missing.test", 443)
        assert len(server.asked) == 2
        assert resolver.known("missing.test") is None
        clock.now += 21  # the SOA says 20 s
        with pytest.raises(ResolveError):
            await resolver.resolve("missing.test", 443)
        assert len(server.asked) == 4
    asyncio.run(run())


def test_concurrent_misses_for_one_name_ask_the_server_once(zone: tuple[Zone, int]) -> None:
    server, port = zone
    resolver = _resolver(port, Clock())

    async def run() -> None:
        results = await asyncio.gather(*(resolver.resolve("web.test", 443) for _ in range(20)))
        assert len(set(results)) == 1
    asyncio.run(run())
    assert len(server.asked) == 2


def test_system_resolver_answers_live_for_the_fixed_ttl() -> None:
    clock = Clock()
    resolver = Resolver(system_ttl=30.0, clock=clock)

    async def run() -> None:
        found = await resolver.resolve("localhost", 80)
        assert resolver.known("localhost") == found
        clock.now += 31
        assert resolver.known("localhost") is None
    asyncio.run(run())


def test_silent_server_is_an_error_cached_only_briefly() -> None:
    import socket
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    clock = Clock()
    resolver = Resolver(nameservers=[silent.getsockname()], ask=ask, clock=clock, timeout=0.3,
                        min_ttl=5.0, negative_ttl=300.0)

    async def run() -> None:
        with pytest.raises(ResolveError, match="timed out"):
            await resolver.resolve("web.test", 443)
        with pytest.raises(ResolveError, match="timed out"):  # cached: no second wait
            await asyncio.wait_for(resolver.resolve("web.test", 443), 0.1)
        clock.now += 6
        with pytest.raises(ResolveError):
            await resolver.resolve("web.test", 443)
    try:
        asyncio.run(run())
    finally:
        silent.close()
