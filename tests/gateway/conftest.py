"""Real sockets only: the gateway runs on a uvloop loop in a thread; upstream HTTP, TLS and
echo servers run in threads on loopback; clients are httpx, curl and raw sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from egressguard.audit.events import DecisionEvent
from egressguard.engine.holder import SnapshotHolder
from egressguard.gateway import Gateway, Limits, Resolver, parse_resolve
from egressguard.policyfile import PolicyFileWatcher, load_active

LOOPBACK_POLICY = """
restrict_outbound_network_access: Enabled
network_rule_collections:
  - name: test-upstreams
    priority: 100
    rules:
      - name: loopback-one
        destinations: [127.0.0.1/32]
        protocols: [TCP]
        match_resolved_names: true
"""
CLOSED_POLICY = "restrict_outbound_network_access: Enabled\n"


class Upstream(BaseHTTPRequestHandler):
    """Echoes what it received, so tests can see exactly what the gateway forwarded."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        self.request.settimeout(5)
        super().setup()
        self.server.peers.append(self.client_address)

    def log_message(self, format: str, *args: object) -> None:
        return

    def _send(self, body: bytes, status: int = 200, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self, extra: dict[str, object] | None = None) -> None:
        body = {"method": self.command, "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "peer_port": self.client_address[1], **(extra or {})}
        self._send(json.dumps(body).encode())

    def do_GET(self) -> None:
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                piece = f"part{i}:{time.monotonic()}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.startswith("/slow/"):   # answer after that many seconds
            time.sleep(float(self.path.rsplit("/", 1)[1]))
            self._echo()
        elif self.path.startswith("/big/"):
            self._send(b"x" * int(self.path.rsplit("/", 1)[1]), ctype="text/plain")
        elif self.path.startswith("/close-delimited"):
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close" * 100)
            self.close_connection = True
        else:
            self._echo()

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = bytearray(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._echo({"received": len(data), "sha256": hashlib.sha256(data).hexdigest()})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    peers: list[tuple[str, int]]


@dataclass
class Server:
    port: int
    peers: list[tuple[str, int]]
    stop: Callable[[], None]


def _serve(server: socketserver.BaseServer) -> Callable[[], None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def start_http(tls_context: ssl.SSLContext | None = None, host: str = "127.0.0.1",
               port: int = 0) -> Server:
    server = _HTTPServer((host, port), Upstream)
    server.peers = []
    if tls_context is not None:
        # Handshake in the handler thread, so a stalled client cannot block accept().
        server.socket = tls_context.wrap_socket(server.socket, server_side=True,
                                                do_handshake_on_connect=False)
    return Server(server.server_address[1], server.peers, _serve(server))


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_echo(port: int = 0) -> Server:
    server = _EchoServer(("127.0.0.1", port), _Echo)
    return Server(server.server_address[1], [], _serve(server))


class ListSink:
    def __init__(self) -> None:
        self.events: list[DecisionEvent] = []

    def emit(self, event: DecisionEvent) -> None:
        self.events.append(event)

    def wait_for(self, predicate: Callable[[DecisionEvent], bool],
                 timeout: float = 3.0) -> DecisionEvent:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no matching event in {self.events}")


@dataclass
class Running:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    sink: Any  # a ListSink unless the test passes its own (an AuditLog)
    policy_path: Path
    holder: SnapshotHolder
    watcher: PolicyFileWatcher
    thread: threading.Thread
    extra: list[object] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.gateway.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], object]) -> object:
        async def run() -> object:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def stop(self, deadline: float = 0.5) -> None:
        self.call(self.watcher.stop)
        asyncio.run_coroutine_threadsafe(self.gateway.stop(deadline), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def make(policy: str = LOOPBACK_POLICY, resolve: dict[str, str] | None = None,
             limits: Limits | None = None, report_only: bool = False,
             sink: Any = None, resolver: Resolver | None = None,
             **gateway_options: Any) -> Running:
        path = tmp_path / f"policy{len(started)}.yaml"
        path.write_text(policy)
        holder = SnapshotHolder(load_active(path))
        sink = ListSink() if sink is None else sink
        static = parse_resolve(f"{k}={v}" for k, v in (resolve or {}).items())
        gateway = Gateway(holder, sink, resolver or Resolver(static, system=False),
                          limits or Limits(), report_only=report_only, **gateway_options)
        loop = uvloop.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(gateway.start("127.0.0.1", 0), loop).result(5)
        watcher = PolicyFileWatcher(path, holder)
        running = Running(gateway, loop, sink, path, holder, watcher, thread)
        running.call(watcher.start)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = start_http()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(ca: trustme.CA) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("up.test", "other.test", "127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    server = start_http(context)
    yield server
    server.stop()


@pytest.fixture
def echo() -> Iterator[Server]:
    server = start_echo()
    yield server
    server.stop()


def raw(port: int, data: bytes, *, read_until_close: bool = True,
        timeout: float = 3.0) -> bytes:
    """Send bytes to the gateway and return what it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                if not read_until_close and b"\r\n\r\n" in out:
                    break
        except TimeoutError:
            pass
        return out


def connect_tunnel(port: int, target: str, timeout: float = 3.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock
