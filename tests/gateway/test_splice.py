"""Zero-copy tunnels (gateway.splice): once the first client bytes are checked, a tunnel is
relayed by os.splice; bytes arrive unchanged both ways, half-closes and resets travel on,
byte counts and the idle deadline still hold, and without splice the protocol relay
carries the same bytes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from egressguard.gateway import Limits, splice
from tests.gateway.conftest import connect_tunnel

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20


class Destination:
    """A TCP server on loopback running `handle(conn)` per connection in a thread."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.errors: list[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handle(conn)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def close(self) -> None:
        self.sock.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(MiB, n - len(out)))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def _hash_then_send(conn: socket.socket) -> None:
    """Read an 8-byte length and that many bytes; answer their SHA-256, then 6 MiB of
    pseudo-random bytes, then its SHA-256."""
    (n,) = struct.unpack("!Q", _recv_exactly(conn, 8))
    conn.sendall(hashlib.sha256(_recv_exactly(conn, n)).digest())
    payload = os.urandom(6 * MiB)
    conn.sendall(payload)
    conn.sendall(hashlib.sha256(payload).digest())


@pytest.fixture
def hashing() -> Iterator[Destination]:
    dest = Destination(_hash_then_send)
    yield dest
    dest.close()


def _relays(gw) -> list[object]:  # type: ignore[no-untyped-def]
    return gw.call(lambda: [c.relay for c in gw.gateway.clients])  # type: ignore[no-any-return]


def _transfer(gw, port: int) -> list[object]:  # type: ignore[no-untyped-def]
    """8 MiB up and 6 MiB down through one tunnel, both checked by hash; returns the
    connections' relays seen mid-transfer."""
    sock = connect_tunnel(gw.port, f"dest.test:{port}", timeout=20)
    with sock:
        up = os.urandom(8 * MiB)
        sock.sendall(struct.pack("!Q", len(up)) + up[:1024])
        time.sleep(0.2)  # the first bytes are checked; the rest goes by the relay in force
        relays = _relays(gw)
        sock.sendall(up[1024:])
        assert _recv_exactly(sock, 32) == hashlib.sha256(up).digest()
        down = _recv_exactly(sock, 6 * MiB)
        assert _recv_exactly(sock, 32) == hashlib.sha256(down).digest()
    return relays


@pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice needs Linux")
def test_spliced_tunnel_carries_megabytes_both_ways_unchanged_and_counts_them(
        gateway_factory, hashing: Destination) -> None:
    gw = gateway_factory(resolve={"dest.test": "127.0.0.1"})
    relays = _transfer(gw, hashing.port)
    assert any(isinstance(r, splice.SpliceRelay) for r in relays), relays
    event = gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close", 10)
    assert event.bytes_up == 8 + 8 * MiB and event.bytes_down == 32 + 6 * MiB + 32
    assert not hashing.errors


def test_without_splice_the_protocol_relay_carries_the_same_bytes(
        gateway_factory, hashing: Destination, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "AVAILABLE", False)  # as on a platform without os.splice
    gw = gateway_factory(resolve={"dest.test": "127.0.0.1"})
    relays = _transfer(gw, hashing.port)
    assert relays and all(r is None for r in relays)
    event = gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close", 10)
    assert event.bytes_up == 8 + 8 * MiB and event.bytes_down == 32 + 6 * MiB + 32


def test_client_half_close_reaches_the_destination_which_still_answers(
        gateway_factory) -> None:
    def count_until_eof(conn: socket.socket) -> None:
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(f"got {total}".encode())

    dest = Destination(count_until_eof)
    try:
        gw = gateway_factory(resolve={"dest.test": "127.0.0.1"})
        sock = connect_tunnel(gw.port, f"dest.test:{dest.port}", timeout=10)
        with sock:
            sock.sendall(b"x" * 100)
            time.sleep(0.2)
            sock.sendall(b"y" * (3 * MiB))
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer == f"got {100 + 3 * MiB}".encode()
        event = gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close", 5)
        assert event.close_cause in ("client", "upstream")
    finally:
        dest.close()


def test_destination_reset_ends_the_tunnel(gateway_factory) -> None:
    def reset(conn: socket.socket) -> None:
        conn.recv(100)
        time.sleep(0.3)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    dest = Destination(reset)
    try:
        gw = gateway_factory(resolve={"dest.test": "127.0.0.1"})
        sock = connect_tunnel(gw.port, f"dest.test:{dest.port}", timeout=5)
        with sock:
            sock.sendall(b"hello")
            with contextlib.suppress(ConnectionResetError):  # a reset may travel on as one
                assert sock.recv(100) == b""
        gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close", 5)
        assert gw.call(lambda: len(gw.gateway.clients)) == 0
    finally:
        dest.close()


def test_idle_spliced_tunnel_is_closed_after_the_idle_timeout(gateway_factory) -> None:
    def hold(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"ok")
        conn.recv(100)  # until the gateway closes

    dest = Destination(hold)
    try:
        gw = gateway_factory(resolve={"dest.test": "127.0.0.1"},
                             limits=Limits(idle_timeout=0.6))
        sock = connect_tunnel(gw.port, f"dest.test:{dest.port}", timeout=5)
        with sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"ok"
            opened = time.monotonic()
            assert sock.recv(10) == b""
            assert 0.5 < time.monotonic() - opened < 3
        event = gw.sink.wait_for(lambda e: e.kind == "connect" and e.phase == "close", 5)
        assert event.close_cause == "timeout" and event.bytes_up == 2
    finally:
        dest.close()


@pytest.mark.skipif(not splice.AVAILABLE, reason="os.splice needs Linux")
def test_idle_spliced_tunnels_hold_two_descriptors_each_and_no_pipe(gateway_factory) -> None:
    def echo_once(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))
        conn.recv(100)  # until the client goes

    dest = Destination(echo_once)
    socks: list[socket.socket] = []
    try:
        gw = gateway_factory(resolve={"dest.test": "127.0.0.1"})
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(100):
            sock = connect_tunnel(gw.port, f"dest.test:{dest.port}", timeout=5)
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
            socks.append(sock)
        relays = _relays(gw)
        assert sum(isinstance(r, splice.SpliceRelay) for r in relays) == 100
        # Per tunnel: the client's socket here, the destination's socket in the
        # Destination thread, and the gateway's two; pipes went back to the pool.
        grown = len(os.listdir("/proc/self/fd")) - before
        assert grown <= 100 * 4 + splice._PIPES.keep * 2, grown
        assert all(d.pipe is None for r in relays for d in r._dirs)  # type: ignore[attr-defined]
    finally:
        for sock in socks:
            sock.close()
        dest.close()


def test_idle_tunnel_on_the_slow_sweep_is_closed_within_a_quarter_of_its_timeout(
        gateway_factory) -> None:
    # idle_timeout 2 s: tunnels are swept every 0.5 s (not every 0.25 s like the others).
    def hold(conn: socket.socket) -> None:
        conn.sendall(conn.recv(100))
        conn.recv(100)

    dest = Destination(hold)
    try:
        gw = gateway_factory(resolve={"dest.test": "127.0.0.1"},
                             limits=Limits(idle_timeout=2.0))
        sock = connect_tunnel(gw.port, f"dest.test:{dest.port}", timeout=8)
        with sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
            quiet = time.monotonic()
            assert gw.call(lambda: len(gw.gateway.tunnels)) == 1
            assert sock.recv(10) == b""
            waited = time.monotonic() - quiet
            assert 1.9 < waited < 2.0 + 0.5 + 1.0, waited  # + a sweep period + scheduling
        assert gw.call(lambda: len(gw.gateway.tunnels)) == 0
    finally:
        dest.close()
