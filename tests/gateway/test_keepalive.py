"""Requests on a kept-alive connection are handled without a task each; what the gateway
remembers between them (the parsed target, the decision) never outlives what it rests on."""

from __future__ import annotations

import socket
import time

import pytest
from prometheus_client import REGISTRY

from egressguard.audit.events import NullSink
from tests.gateway.conftest import CLOSED_POLICY

pytestmark = pytest.mark.timeout(30)


def get(sock: socket.socket, url: str, host: str) -> bytes:
    """One request on an open connection; the response head and body (Content-Length)."""
    sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_policy_change_applies_to_the_next_request_on_the_same_connection(
        gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    url, host = f"http://up.test:{upstream.port}/", f"up.test:{upstream.port}"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert get(sock, url, host).startswith(b"HTTP/1.1 200")
        before = gw.holder.current
        gw.policy_path.write_text(CLOSED_POLICY)
        end = time.monotonic() + 5
        while gw.holder.current is before:
            assert time.monotonic() < end
            time.sleep(0.02)
        assert get(sock, url, host).startswith(b"HTTP/1.1 403")
        assert get(sock, url + "other/path", host).startswith(b"HTTP/1.1 403")


def test_another_path_to_the_same_target_reuses_the_decision_only_under_its_policy(
        gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    base, host = f"http://up.test:{upstream.port}/", f"up.test:{upstream.port}"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert get(sock, base + "a", host).startswith(b"HTTP/1.1 200")
        assert get(sock, base + "b", host).startswith(b"HTTP/1.1 200")
        before = gw.holder.current
        gw.policy_path.write_text(CLOSED_POLICY)
        end = time.monotonic() + 5
        while gw.holder.current is before:
            assert time.monotonic() < end
            time.sleep(0.02)
        assert get(sock, base + "c", host).startswith(b"HTTP/1.1 403")


def test_same_target_with_another_host_header_on_the_same_connection_is_400(
        gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    url = f"http://up.test:{upstream.port}/"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert get(sock, url, f"up.test:{upstream.port}").startswith(b"HTTP/1.1 200")
        assert get(sock, url, "evil.test").startswith(b"HTTP/1.1 400")


def test_smuggling_headers_on_a_repeated_request_are_still_400(gateway_factory, upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"})
    url, host = f"http://up.test:{upstream.port}/", f"up.test:{upstream.port}"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert get(sock, url, host).startswith(b"HTTP/1.1 200")
        sock.sendall(f"POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


def test_without_an_audit_sink_decisions_and_bytes_are_still_counted(gateway_factory,
                                                                   upstream):
    gw = gateway_factory(resolve={"up.test": "127.0.0.1"}, sink=NullSink())
    allow = {"kind": "http", "verdict": "allow", "layer": "network", "permitted": "true"}
    deny = {"kind": "http", "verdict": "deny", "layer": "default", "permitted": "false"}
    allowed0 = sample("egressguard_decisions_total", allow)
    denied0 = sample("egressguard_decisions_total", deny)
    down0 = sample("egressguard_bytes_total", {"direction": "down"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        for _ in range(3):
            assert get(sock, f"http://up.test:{upstream.port}/",
                       f"up.test:{upstream.port}").startswith(b"HTTP/1.1 200")
        assert get(sock, "http://blocked.test/", "blocked.test").startswith(b"HTTP/1.1 403")
    assert sample("egressguard_decisions_total", allow) - allowed0 == 3
    assert sample("egressguard_decisions_total", deny) - denied0 == 1
    assert sample("egressguard_bytes_total", {"direction": "down"}) - down0 > 0


def test_thousands_of_pipelined_refusals_are_answered_in_order(gateway_factory):
    gw = gateway_factory(sink=NullSink())  # refusals answered without waiting for a record
    n = 3000
    reqs = b"".join(f"GET http://blocked.test/{i} HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
                    .encode() for i in range(n))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(reqs)
        out = b""
        while out.count(b"HTTP/1.1 ") < n:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {out.count(b'HTTP/1.1 ')} answers"
            out += chunk
    assert out.count(b"HTTP/1.1 403 ") == n
