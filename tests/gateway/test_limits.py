"""Nothing a client sends can hold the gateway: slowloris, oversized heads, floods."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest

from egressguard.gateway import Limits, http1
from egressguard.gateway.limits import admission_refusal, deadline_breach
from tests.gateway.conftest import raw
from tests.gateway.served import Footprint, assert_back_to

pytestmark = pytest.mark.timeout(30)


def test_slowloris_head_is_cut_with_408(gateway_factory):
    gw = gateway_factory(limits=Limits(header_timeout=0.5))
    base = Footprint.of(os.getpid())  # the gateway runs in this process
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"GET http://up.test/ HTTP/1.1\r\n")
        out = b""
        try:
            for i in range(20):
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                time.sleep(0.1)
        except OSError:
            pass
        while chunk := sock.recv(4096):
            out += chunk
        elapsed = time.monotonic() - start
    assert out.startswith(b"HTTP/1.1 408")
    assert elapsed < 1.5
    assert_back_to(os.getpid(), base)


def test_oversized_head_is_431(gateway_factory):
    gw = gateway_factory(limits=Limits(max_header_bytes=4096))
    out = raw(gw.port, b"GET http://up.test/ HTTP/1.1\r\nHost: up.test\r\nX-Big: "
              + b"a" * 10000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")


def test_oversized_head_sent_in_pieces_is_431(gateway_factory):
    gw = gateway_factory(limits=Limits(max_header_bytes=4096))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"GET http://up.test/ HTTP/1.1\r\n")
        try:
            for i in range(100):
                sock.sendall(f"X-H{i}: {'v' * 100}\r\n".encode())
        except OSError:
            pass
        assert sock.recv(4096).startswith(b"HTTP/1.1 431")


def test_idle_keep_alive_connection_is_closed(gateway_factory):
    gw = gateway_factory(limits=Limits(idle_timeout=0.5))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        start = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - start < 1.5


def test_connection_flood_beyond_the_limit_gets_503(gateway_factory):
    gw = gateway_factory(limits=Limits(max_connections=3))
    base = Footprint.of(os.getpid())  # the gateway runs in this process
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=3) for _ in range(3)]
    try:
        time.sleep(0.1)
        out = raw(gw.port, b"")
        assert out.startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    r = httpx.get("http://not-allowed.test/", proxy=gw.url)
    assert r.status_code == 403  # capacity is back once clients leave
    assert_back_to(os.getpid(), base, fd_slack=2)  # httpx's pool may linger


def test_binary_garbage_does_not_hurt_the_server(gateway_factory):
    gw = gateway_factory()
    base = Footprint.of(os.getpid())  # the gateway runs in this process
    for blob in (bytes(range(256)) * 4, b"\x16\x03\x01\x00\x05hello", b"\r\n" * 5000):
        raw(gw.port, blob, timeout=1)
    r = httpx.get("http://not-allowed.test/", proxy=gw.url)
    assert r.status_code == 403
    assert_back_to(os.getpid(), base, fd_slack=2)  # httpx's pool may linger


def test_slowloris_on_a_later_keep_alive_request_is_cut(gateway_factory):
    gw = gateway_factory(limits=Limits(header_timeout=0.5))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET http://not-allowed.test/ HTTP/1.1\r\nHost: not-allowed.test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 403")
        start = time.monotonic()
        sock.sendall(b"GET http://up.test/ HTTP/1.1\r\n")
        out = b""
        try:
            for i in range(20):
                sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
                time.sleep(0.1)
        except OSError:
            pass
        while chunk := sock.recv(4096):
            out += chunk
    assert out.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - start < 1.5


def test_half_closed_client_gets_its_answer_then_the_connection_closes(gateway_factory):
    gw = gateway_factory()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        sock.sendall(b"GET http://not-allowed.test/ HTTP/1.1\r\nHost: not-allowed.test\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(4096):
            out += chunk
    assert out.startswith(b"HTTP/1.1 403")


# -- the pure decisions behind the limits (tables) -------------------------------------------

CAPS = Limits(max_connections=10, max_connections_per_source=3)


@pytest.mark.parametrize(("total", "from_source", "draining", "refused"), [
    (0, 0, False, None),
    (9, 2, False, None),
    (9, 3, False, "from this address"),     # one source at its cap, budget left
    (10, 0, False, "too many concurrent connections"),
    (10, 3, False, "from this address"),
    (0, 0, True, "shutting down"),
])
def test_admission_caps_each_source_before_the_shared_budget(total, from_source, draining,
                                                              refused):
    why = admission_refusal(CAPS, total, from_source, draining)
    assert (why is None) if refused is None else (why is not None and refused in why)


T = Limits(header_timeout=10, response_timeout=60, idle_timeout=300)


@pytest.mark.parametrize(("state", "now", "expected"), [
    # never sent a byte: the header timeout runs from accept, not the idle timeout
    ({"served": False}, 9.0, None),
    ({"served": False}, 10.5, 408),
    # a later head in progress, begun at 100
    ({"in_head": True, "head_started": 100.0}, 109.0, None),
    ({"in_head": True, "head_started": 100.0}, 110.5, 408),
    # the upstream owes a response head since 200
    ({"awaiting_response": 200.0}, 259.0, None),
    ({"awaiting_response": 200.0}, 260.5, 504),
    # nothing owed, idle since 0: closed quietly
    ({"idle_since": 0.0}, 299.0, None),
    ({"idle_since": 0.0}, 300.5, 0),
])
def test_deadline_breach_table(state, now, expected):
    args = {"accepted": 0.0, "served": True, "in_head": False, "head_started": 0.0,
            "awaiting_response": 0.0, "idle_since": now, **state}
    breach = deadline_breach(T, now, **args)
    assert (breach is None) if expected is None else (breach is not None
                                                      and breach[0] == expected)


@pytest.mark.parametrize(("hosts", "version", "host", "port", "expected"), [
    ([b"up.test"], "1.1", "up.test", None, b""),
    ([], "1.0", "up.test", None, b"Host: up.test\r\n"),
    ([], "1.0", "up.test", 8080, b"Host: up.test:8080\r\n"),
    ([], "1.0", "::1", 80, b"Host: [::1]:80\r\n"),
    ([], "1.1", "up.test", None, "missing Host"),
    ([b"up.test"], "0.9", "up.test", None, "unsupported HTTP version"),
    ([b"up.test"], "2.0", "up.test", None, "unsupported HTTP version"),
])
def test_host_to_add_only_for_http10_without_host(hosts, version, host, port, expected):
    if isinstance(expected, bytes):
        assert http1.host_to_add(hosts, version, host, port) == expected
    else:
        with pytest.raises(http1.BadRequest, match=expected):
            http1.host_to_add(hosts, version, host, port)
