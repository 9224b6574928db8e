"""A hostile client against `egressguard serve` as a process: silent socket floods, leaks
of half-open exchanges, and a seeded mutational fuzzer over the request-smuggling classes.
After each test the gateway's fd count and RSS are back to baseline and its log holds no
traceback (`Served.assert_back_to_baseline`)."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.fuzz import Outcome, fuzz_inputs, run_fuzz
from tests.gateway.served import (
    RecordingUpstream,
    ScriptedUpstream,
    Served,
    exchange,
    read_response,
    start_served,
    until_eof,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
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
def origin() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.stop()


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# -- silent sockets (issue 10 item 3) --------------------------------------------------------

def test_silent_sockets_from_one_source_do_not_lock_out_others(serve, origin):
    silent, budget, per_source, header_timeout = 2000, 1024, 256, 4.0
    _raise_nofile(silent + 512)
    gw = serve("--max-connections", str(budget), "--max-connections-per-source",
               str(per_source), "--header-timeout", str(header_timeout),
               "--idle-timeout", "300")
    socks: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(silent):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.2", 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", gw.port))
            socks.append(sock)
        # More silent sockets than the whole budget, from one address: another client is
        # still served at once.
        request = (f"GET http://127.0.0.1:{origin.port}/other HTTP/1.1\r\n"
                   f"Host: 127.0.0.1:{origin.port}\r\n\r\n").encode()
        out = exchange(gw.port, request, source="127.0.0.3", timeout=5)
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        assert time.monotonic() - opened < header_timeout, "the flood took too long to open"
        # Every silent socket is closed: beyond the cap at once (503), the admitted ones
        # when the header timeout from accept runs out (408), never after the idle timeout.
        answers = _read_all_until_closed(socks, timeout=header_timeout + 10)
        elapsed = time.monotonic() - opened
    finally:
        for sock in socks:
            sock.close()
    statuses = [a[:12] for a in answers]
    assert len(answers) == silent
    assert statuses.count(b"HTTP/1.1 503") >= silent - budget
    assert 0 < statuses.count(b"HTTP/1.1 408") <= silent - statuses.count(b"HTTP/1.1 503")
    assert set(statuses) <= {b"HTTP/1.1 503", b"HTTP/1.1 408", b""}
    assert elapsed < header_timeout + 10
    assert b"from this address" in next(a for a in answers if a.startswith(b"HTTP/1.1 503"))
    assert gw.log().count("(the per-source cap)") == 1
    gw.assert_back_to_baseline()


def _read_all_until_closed(socks: list[socket.socket], timeout: float) -> list[bytes]:
    selector = selectors.DefaultSelector()
    data: dict[socket.socket, bytes] = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        data[sock] = b""
    done: list[bytes] = []
    end = time.monotonic() + timeout
    while len(done) < len(socks) and time.monotonic() < end:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                chunk = b""
            if chunk:
                data[sock] += chunk
                continue
            selector.unregister(sock)
            done.append(data[sock])
    selector.close()
    return done


# -- leaks (issue 10 item 5) --------------------------------------------------------------

def _echo_script(up: ScriptedUpstream, conn: socket.socket) -> None:
    conn.settimeout(30)
    try:
        while data := conn.recv(65536):
            conn.sendall(data)
    except TimeoutError:
        return
    except OSError:
        pass
    up.saw_eof()


def test_get_then_connect_on_one_connection_closes_the_pooled_upstream(serve, tmp_path):
    http_origin = RecordingUpstream(idle=30)  # keeps idle connections: a leak would stay
    echo = ScriptedUpstream(_echo_script)
    try:
        gw = serve("--idle-timeout", "300")
        rounds = 20
        for i in range(rounds):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
                sock.sendall(f"GET http://127.0.0.1:{http_origin.port}/{i} HTTP/1.1\r\n"
                             f"Host: 127.0.0.1:{http_origin.port}\r\n\r\n".encode())
                head, body = read_response(sock)
                assert head.startswith(b"HTTP/1.1 200") and body == b"ok 0"
                sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
                             f"Host: 127.0.0.1:{echo.port}\r\n\r\n".encode())
                head, _ = read_response(sock)
                assert head.startswith(b"HTTP/1.1 200"), head
                sock.sendall(b"ping")
                assert sock.recv(10) == b"ping"
        assert http_origin.accepted == rounds
        assert http_origin.wait(lambda: http_origin.closed_by_peer == rounds), (
            f"{rounds - http_origin.closed_by_peer} of {rounds} pooled upstreams left open")
        assert echo.wait(lambda: echo.closed_by_peer == rounds)
        gw.assert_back_to_baseline()
    finally:
        http_origin.stop()
        echo.stop()


def test_client_fin_before_the_tunnel_is_up_releases_both_sockets(serve):
    echo = ScriptedUpstream(_echo_script)
    try:
        gw = serve("--idle-timeout", "300")
        rounds = 20
        for _ in range(rounds):
            start = time.monotonic()
            out = exchange(gw.port, f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
                           f"Host: 127.0.0.1:{echo.port}\r\n\r\n".encode(), timeout=10)
            assert time.monotonic() - start < 3, "the gateway held the half-closed client"
            assert out == b"" or out.startswith(b"HTTP/1.1 200"), out
        assert echo.wait(lambda: echo.closed_by_peer == echo.accepted, timeout=3)
        gw.assert_back_to_baseline()
    finally:
        echo.stop()


def test_client_fin_in_the_middle_of_a_request_body_releases_both_sockets(serve):
    held = ScriptedUpstream(lambda up, conn: until_eof(up, conn))
    try:
        gw = serve("--idle-timeout", "300")
        for _ in range(10):
            start = time.monotonic()
            out = exchange(gw.port, f"POST http://127.0.0.1:{held.port}/ HTTP/1.1\r\n"
                           f"Host: 127.0.0.1:{held.port}\r\nContent-Length: 100000\r\n\r\n"
                           "only part of the body".encode(), timeout=10)
            assert time.monotonic() - start < 3 and out == b"", out
        assert held.wait(lambda: held.closed_by_peer == held.accepted == 10, timeout=3)
        gw.assert_back_to_baseline()
    finally:
        held.stop()


# -- the fuzzer (issue 10 "done when") ------------------------------------------------------

FUZZ_COUNT = int(os.environ.get("EGRESSGUARD_FUZZ_COUNT", "1500"))
FUZZ_SECONDS = float(os.environ.get("EGRESSGUARD_FUZZ_SECONDS", "30"))
FUZZ_SEED = int(os.environ.get("EGRESSGUARD_FUZZ_SEED", "20261201"))


def test_mutated_and_smuggling_requests_are_refused_and_nothing_is_smuggled(serve, origin):
    gw = serve("--header-timeout", "1", "--response-timeout", "3", "--idle-timeout", "10",
               "--max-header-bytes", "8192")
    inputs = fuzz_inputs(FUZZ_SEED, FUZZ_COUNT, origin.port)
    outcomes = run_fuzz(gw.port, inputs, seconds=FUZZ_SECONDS, workers=6)
    assert len(outcomes) >= min(300, FUZZ_COUNT), "too few inputs ran in the time bound"
    bad: list[Outcome] = [o for o in outcomes if not o.acceptable]
    assert not bad, "\n".join(f"{o.status} {o.data[:300]!r}" for o in bad[:10])
    # Nothing smuggled: the origin (a strict parser of its own) saw no request the
    # gateway did not itself decide, and nothing it could not parse.
    smuggled = [r for r in origin.requests if b"SMUGGLED" in r[1]
                or any(b"SMUGGLED" in n for n, _ in r[2])]
    assert not smuggled, smuggled[:5]
    assert not origin.errors, origin.errors[:5]
    answered = sum(o.status is not None for o in outcomes)
    assert answered > len(outcomes) // 2
    assert any(o.status == 200 for o in outcomes) and any(o.status == 400 for o in outcomes)
    gw.assert_back_to_baseline(settle=15)
