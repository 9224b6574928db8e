"""A hostile or broken upstream against `egressguard serve` as a process: silence (504),
an endless response head (502, memory bounded), and a response injected for the client's
next request (the upstream connection closed, the bytes never relayed, never pooled)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.gateway.served import (
    ScriptedUpstream,
    Served,
    read_request_head,
    read_response,
    start_served,
    until_eof,
)

pytestmark = pytest.mark.timeout(90)
Script = Callable[[ScriptedUpstream, socket.socket], None]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    running: list[Served] = []

    def start(*options: str) -> Served:
        served = start_served(tmp_path, *options)
        running.append(served)
        return served

    yield start
    for served in running:
        served.stop()
        served.assert_no_traceback()


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedUpstream]]:
    servers: list[ScriptedUpstream] = []

    def make(script: Script) -> ScriptedUpstream:
        servers.append(ScriptedUpstream(script))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def _get(port: int, up: int, path: str = "/", method: str = "GET") -> bytes:
    return (f"{method} http://127.0.0.1:{up}{path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{up}\r\n\r\n").encode()


def _silent(up: ScriptedUpstream, conn: socket.socket) -> None:
    read_request_head(conn)
    until_eof(up, conn)


def test_upstream_that_never_answers_gets_504_after_the_response_timeout(serve, scripted):
    origin = scripted(_silent)
    gw = serve("--response-timeout", "1", "--idle-timeout", "300")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(_get(gw.port, origin.port))
        head, body = read_response(sock)
        elapsed = time.monotonic() - start
    assert head.startswith(b"HTTP/1.1 504"), head
    assert b"no response head within 1 s" in body
    assert 0.9 < elapsed < 4
    assert origin.wait(lambda: origin.closed_by_peer == 1)
    gw.assert_back_to_baseline()


def test_slow_request_body_does_not_start_the_response_timeout(serve, scripted):
    def answer_after_body(up: ScriptedUpstream, conn: socket.socket) -> None:
        data = read_request_head(conn)
        while not data.endswith(b"0\r\n\r\n"):
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        until_eof(up, conn)

    origin = scripted(answer_after_body)
    gw = serve("--response-timeout", "1")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(f"POST http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1:"
                     f"{origin.port}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(4):  # 2 s of upload, longer than the response timeout
            sock.sendall(b"1\r\na\r\n")
            time.sleep(0.5)
        sock.sendall(b"0\r\n\r\n")
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    gw.assert_back_to_baseline(fd_slack=1)  # the idle upstream may be pooled


@pytest.mark.parametrize("shape", ["one-long-header", "many-headers"])
def test_oversized_upstream_response_head_is_502_and_memory_stays_bounded(serve, scripted,
                                                                          shape):
    sent: list[int] = []

    def endless_head(up: ScriptedUpstream, conn: socket.socket) -> None:
        read_request_head(conn)
        conn.settimeout(10)
        total = 0
        piece = (b"a" * 65536 if shape == "one-long-header"
                 else b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(1000)))
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Start: " if shape == "one-long-header"
                         else b"HTTP/1.1 200 OK\r\n")
            while total < 300 << 20:   # 300 MiB of head, unless the gateway hangs up
                conn.sendall(piece)
                total += len(piece)
        except OSError:
            up.saw_eof()
        sent.append(total)

    origin = scripted(endless_head)
    gw = serve("--max-response-header-bytes", "65536")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        sock.sendall(_get(gw.port, origin.port))
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 502"), head[:300]
    assert b"larger than 65536 bytes" in body
    assert origin.wait(lambda: origin.closed_by_peer == 1)
    assert sent and sent[0] < 64 << 20, f"the gateway read {sent[0]} bytes of head"
    gw.assert_back_to_baseline(rss_slack_mib=24)


def _injecting(delay: float, head_only: bool = False) -> Script:
    """Answers the first request, then (at once or after `delay`) injects a response for
    the client's next one; answers any later connection honestly."""

    def script(up: ScriptedUpstream, conn: socket.socket) -> None:
        head = read_request_head(conn)
        if up.accepted > 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest")
            until_eof(up, conn)
            return
        first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        if not head.startswith(b"HEAD"):
            first += b"first"
        injected = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED"
        if head_only:
            injected = b"INJECTED"  # a "body" after a HEAD response
        if delay:
            conn.sendall(first)
            time.sleep(delay)
            conn.sendall(injected)
        else:
            conn.sendall(first + injected)
        until_eof(up, conn)

    return script


@pytest.mark.parametrize(("delay", "method"), [(0.0, "GET"), (0.3, "GET"), (0.0, "HEAD")],
                         ids=["same-write", "later-write", "after-head-response"])
def test_response_injected_for_the_next_request_is_never_relayed(serve, scripted, delay,
                                                                 method):
    origin = scripted(_injecting(delay, head_only=method == "HEAD"))
    gw = serve()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_get(gw.port, origin.port, "/one", method))
        head, body = read_response(sock) if method == "GET" else (_head(sock), b"")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == (b"first" if method == "GET" else b"")
        time.sleep(delay + 0.3)
        sock.sendall(_get(gw.port, origin.port, "/two"))
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"honest", (head, body)
    assert origin.accepted == 2   # the tainted connection was not reused
    assert origin.wait(lambda: origin.closed_by_peer >= 1)
    assert "sent bytes after its response" in gw.log() or delay
    gw.assert_back_to_baseline(fd_slack=1)  # the honest connection may be pooled


def _head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1)
    return data
