"""Which upstream connection a request rides on: a client's kept-alive connection may
carry its requests to several names served at one checked address and port, but a
connection is never shared with another client for another name, never used for an
address or port that was not checked, and never carries another name once the policy
it was got under has changed (an origin that routes a connection by its first request's
Host would otherwise serve a name the caller may no longer reach)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.gateway.conftest import Running, start_http
from tests.gateway.test_keepalive import get

pytestmark = pytest.mark.timeout(30)

NAMES = """
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
application_rule_collections:
  - name: apps
    priority: 100
    rules:
{rules}
"""
BOTH = NAMES.format(rules='      - {name: a, targets: [a.test], protocols: ["http:*"]}\n'
                          '      - {name: b, targets: [b.test], protocols: ["http:*"]}')
ONLY_B = NAMES.format(rules='      - {name: b, targets: [b.test], protocols: ["http:*"]}')


def echoed(sock: socket.socket, name: str, port: int) -> dict[str, object]:
    """GET http://name:port/ on `sock`: the upstream's echo of what it received."""
    response = get(sock, f"http://{name}:{port}/", f"{name}:{port}")
    assert response.startswith(b"HTTP/1.1 200"), response
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def swap(gw: Running, policy: str) -> None:
    before = gw.holder.current
    gw.policy_path.write_text(policy)
    end = time.monotonic() + 5
    while gw.holder.current is before:
        assert time.monotonic() < end
        time.sleep(0.02)


def test_a_clients_requests_to_two_names_at_one_address_share_its_upstream_connection(
        gateway_factory, upstream):
    gw = gateway_factory(BOTH, resolve={"a.test": "127.0.0.1", "b.test": "127.0.0.1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        seen = [echoed(sock, name, upstream.port) for name in ("a.test", "b.test", "a.test")]
    assert [dict(s["headers"])["Host"] for s in seen] == [  # type: ignore[call-overload]
        f"{name}:{upstream.port}" for name in ("a.test", "b.test", "a.test")]
    assert len(upstream.peers) == 1


def test_a_connection_opened_for_one_name_is_not_handed_to_another_client_for_another(
        gateway_factory, upstream):
    gw = gateway_factory(BOTH, resolve={"a.test": "127.0.0.1", "b.test": "127.0.0.1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        echoed(sock, "a.test", upstream.port)
        echoed(sock, "b.test", upstream.port)  # rides on a.test's connection
    time.sleep(0.1)  # the client's close parks it, under a.test
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        echoed(sock, "b.test", upstream.port)
    assert len(upstream.peers) == 2
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        echoed(sock, "a.test", upstream.port)  # the parked one, for the name it was for
    assert len(upstream.peers) == 2


def test_a_name_at_another_address_gets_a_connection_to_that_address(
        gateway_factory, upstream):
    other = start_http(host="127.0.0.2", port=upstream.port)
    try:
        gw = gateway_factory(BOTH, resolve={"a.test": "127.0.0.1", "b.test": "127.0.0.2"})
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            echoed(sock, "a.test", upstream.port)
            echoed(sock, "b.test", upstream.port)
            echoed(sock, "a.test", upstream.port)
    finally:
        other.stop()
    assert len(upstream.peers) == 1 and len(other.peers) == 1


def test_a_name_at_another_port_of_the_same_address_gets_its_own_connection(
        gateway_factory, upstream):
    another = start_http()
    try:
        gw = gateway_factory(BOTH, resolve={"a.test": "127.0.0.1", "b.test": "127.0.0.1"})
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            echoed(sock, "a.test", upstream.port)
            echoed(sock, "b.test", another.port)
    finally:
        another.stop()
    assert len(upstream.peers) == 1 and len(another.peers) == 1


def test_after_a_policy_change_another_name_never_rides_on_the_connection_got_before(
        gateway_factory, upstream):
    gw = gateway_factory(BOTH, resolve={"a.test": "127.0.0.1", "b.test": "127.0.0.1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        echoed(sock, "a.test", upstream.port)
        swap(gw, ONLY_B)   # a.test is no longer reachable: nor is its connection
        echoed(sock, "b.test", upstream.port)
        assert len(upstream.peers) == 2
        echoed(sock, "b.test", upstream.port)
        assert get(sock, f"http://a.test:{upstream.port}/",
                   f"a.test:{upstream.port}").startswith(b"HTTP/1.1 403")
    assert len(upstream.peers) == 2
